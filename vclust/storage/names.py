"""The analysts' cluster names: a CSV ``cluster,name[,note]`` as ``--names`` takes it (the
report's cards download one)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def read_names(path, n_clusters: int | None = None) -> dict[int, tuple[str, str]]:
    """Analysts' cluster names: a CSV ``cluster,name[,note]`` -> {cluster: (name, note)}.

    A cluster id that is not a whole number, is repeated, or (given ``n_clusters``) is not a
    cluster of the model is refused with one line naming it.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--names {path}: no such file")
    try:
        f = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--names {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    f.columns = [c.strip().lower() for c in f.columns]
    if not {"cluster", "name"} <= set(f.columns):
        raise InputError(f"--names {path}: expected columns cluster,name[,note]; got "
                         f"{','.join(f.columns)}")
    out = {}
    for raw, name, note in zip(f["cluster"], f["name"], f.get("note", [""] * len(f))):
        try:
            k = int(raw.strip())
        except ValueError:
            raise InputError(f"--names {path}: cluster '{raw}' is not a cluster number") from None
        if k in out:
            raise InputError(f"--names {path}: cluster {k} is named twice")
        if n_clusters is not None and not 0 <= k < n_clusters:
            raise InputError(f"--names {path}: the model has no cluster {k} (its clusters are "
                             f"0..{n_clusters - 1})")
        out[k] = (name.strip(), note.strip())
    return out
