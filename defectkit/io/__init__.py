"""Reading images, persisting state and writing results."""
