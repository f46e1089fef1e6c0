"""Experiments built on the whole pipeline: the paired-seed study, the label-leak check, the demo and its report,
and attribute pseudo-labels. Run ``train``/``aah``/``evaluate``; write study.json, report.html and label files."""
