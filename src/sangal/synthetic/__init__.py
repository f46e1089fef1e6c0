"""The synthetic pedestrian renderer: Market-1501-layout datasets drawn from real attribute statistics, with part masks.

``generate`` writes a dataset folder (``generate_synthetic``); ``people``, ``scene``, ``draw``, ``labels`` and
``stats`` are who is drawn, where, how, the part label map and the label statistics. The folder it writes is
read like any Market-1501 folder, by :mod:`sangal.data` (the ``synthetic`` dataset entry).
"""
