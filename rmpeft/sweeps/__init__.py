"""Sweeps: sweep files (``spec``), the fast exact composer (``compose``), run status (``status``),
launching through Hydra launchers (``launch``) and ``rmpeft-sweep`` (``cli``). Every private Hydra API
they use lives in ``hydra_internals``."""
