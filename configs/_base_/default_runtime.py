# Settings shared by every reference config.
# device "auto": CUDA (mixed precision) when a GPU is visible, else the CPU; num_threads None: every core.
# keep_freed_memory: glibc keeps up to 1 GB of freed heap for reuse instead of faulting it back in
# (the built-in texture run: 5.1M -> 2.4M page faults, docs/performance.md); False for glibc's defaults.
runtime = dict(seed=0, num_threads=None, device="auto", keep_freed_memory=True)
# overlays: 'all' for review runs; 'defects' skips drawing images the gate passed as normal.
# runtime: 'torch', or 'onnxruntime' / 'openvino' to run the networks `defectkit export` wrote.
predict = dict(batch_size=16, overlays="all", decode_workers=2, runtime="torch")
split = dict(ratios=(0.7, 0.1, 0.2), seed=0)
