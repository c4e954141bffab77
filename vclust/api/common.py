"""What every function of vclust.api shares: options validated by the parameter models, where
the work runs, which model is meant."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..jobs import params as P

log = logging.getLogger("vclust.api")


def say(msg: str) -> None:
    log.info("%s", msg)


def options_of(model: type[P.Params], **given):
    """``model`` validated from keyword arguments; a bad value is one InputError line naming
    the keyword (as the command line's names the flag)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            raise InputError(msg) from None
        name = str(err["loc"][0])
        if err["type"] == "extra_forbidden":
            known = ", ".join(n for n in model.model_fields)
            raise InputError(f"{name}: not an option of this step; its options: {known}") from None
        if "got" in msg:  # a validator's own message: "must look like A:B ...; got '9:4'"
            raise InputError(f"{name} {msg}") from None
        raise InputError(f"{name}: {msg.lower()} (got {err.get('input')!r})") from None


def current_client():
    """The distributed client this process's graphs run on, or None (none made, or dask's
    scheduler set to this process's threads)."""
    from ..numerics.blocks import distributed_client

    return distributed_client()


@contextmanager
def compute(client=None, here: str | None = None, command: str | None = None,
            map_method: str | None = None):
    """Where a step's graphs run: ``client``, else the client in use, else as the command
    line (``cluster.connect``; ``here``: why the step may run on this process's threads;
    ``command`` and its ``map_method``: for what a LocalCluster's server preloads)."""
    if client is not None:
        with client.as_current():
            yield client
        return
    existing = current_client()
    if existing is not None:
        yield existing
        return
    from ..jobs.cluster import connect
    from ..jobs.workerstart import preload_for

    with connect(announce=say, here=here, preload=preload_for(command, map_method)) as started:
        yield started


def load_model(registry=None, model=None):
    """A loaded model: ``model`` itself when it is one, else an id in ``registry`` (default its
    current model) or a model folder."""
    from ..model.bundle import Model
    from ..model.registry import resolve_model

    if isinstance(model, Model):
        return model
    return resolve_model(None if model is None else str(model),
                         None if registry is None else str(registry))




def model_id_of(labels_dir, registry=None, model=None) -> str:
    """The model whose labels are meant: ``model`` (an id, a folder or a Model), else the
    registry's current one, else the only model in ``labels_dir`` (as ``vclust export``)."""
    from ..model.bundle import Model
    from ..model.registry import Registry
    from ..storage.labels import models

    if isinstance(model, Model):
        return model.model_id
    if model is not None:
        if registry is not None:
            return Registry(str(registry)).resolve(str(model)).name
        manifest = Path(str(model)) / "manifest.json"
        return json.loads(manifest.read_text())["model_id"] if manifest.is_file() else str(model)
    if registry is not None:
        current = Registry(str(registry)).current()
        if current is None:
            raise InputError(f"{registry}: no current model; promote one or pass model=")
        return current
    present = models(str(labels_dir))
    if len(present) != 1:
        raise InputError(f"{labels_dir} holds labels of {len(present) or 'no'} models"
                         + (f" ({', '.join(present)})" if present else "")
                         + "; pass model= or registry=")
    return present[0]




def names_of(names, present=None) -> dict:
    """{cluster: (name, note)} from a names CSV; a name of a cluster not in ``present`` is
    refused (as ``vclust export`` refuses it)."""
    from ..storage.names import read_names

    if names is None:
        return {}
    named = read_names(str(names))
    unknown = sorted(set(named) - set(present)) if present is not None else []
    if unknown:
        raise InputError(f"names {names}: the model has no cluster "
                         f"{', '.join(map(str, unknown))} in its labels")
    return named
