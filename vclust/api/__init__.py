"""vclust from Python: the commands as functions, their results as pandas DataFrames, and a
cluster's card, the outliers and the map inline in Jupyter.

Every function takes the options of its command as keyword arguments, validated by the same
parameter model (vclust.jobs.params) and run by the same steps (vclust.jobs, vclust.model), so a
call and a command with the same options write the same store, models, labels and CSV::

    from vclust import api

    api.ingest("data/store", ["IntelliVision_case/"], batch="initial")
    cmp = api.compare("data/store", ["osnet", "vdc_color", "osnet+vdc_color"], k_range="6:16",
                      registry="data/registry", labels_dir="data/labels", out="data/compare")
    cmp.runs, cmp.agreement, cmp.proposal          # DataFrames; cmp.proposed: the model id
    view = api.view("data/store", "data/labels", registry="data/registry",
                    model=cmp.proposed, images="IntelliVision_case/veriwild.zip")
    view.clusters                                  # the cluster table
    view.card(3)                                   # nearest, random and border images, inline
    view.outliers()                                # a gallery per outlier reason, inline
    view.map()                                     # a Plotly figure
    api.models("data/registry")                    # the registry's models, which is current
    api.promote("data/registry", cmp.proposed, labels_dir="data/labels", names="names.csv")
    api.labels("data/labels", registry="data/registry", names="names.csv")   # one model's rows
    api.export("data/labels", "best_partition.csv", registry="data/registry", names="names.csv")

Where the work runs: on the Dask client given as ``client=``, else on the distributed client
already in use (``distributed.Client(...)`` made in the notebook), else as the command line
runs it (vclust.jobs.cluster.connect: ``$VCLUST_SCHEDULER``, else a LocalCluster started for the
call, or this process's threads for a fit or a label small enough, as ``vclust fit`` and
``vclust label`` decide).

Errors are the command line's: bad input raises ``vclust.errors.InputError`` (a ValueError; the
command exits 2 with its one line), an environment fault ``vclust.errors.EnvironmentFault`` or
the OSError or distributed error behind it (the command's exit 4). Progress goes to the
``vclust`` logger at INFO.
"""

from .commands import compare, export, fit, info, ingest, label, pixels, promote, synth
from .tables import Comparison, clusters, labels, models, partitions, read_comparison
from .views import ClusterCard, Gallery, ModelView, view

__all__ = ["Comparison", "ClusterCard", "ModelView", "Gallery", "clusters", "compare",
           "export", "fit", "info", "ingest", "label", "labels", "models", "partitions",
           "pixels", "promote", "read_comparison", "synth", "view"]
