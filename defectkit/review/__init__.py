"""The review web app: reviewers see, correct and export what a run found (``defectkit review WORK_DIR``).

``run_data.py`` reads a work dir (predictions, ground truth), ``store.py`` keeps the reviewers'
decisions, ``export.py`` writes them as COCO and polygon JSON, ``app.py`` serves the page in
``static/``. Needs the ``review`` extra (``pip install defectkit[review]``).
"""
