"""Kedro pipelines: thin nodes over the `selfsup` core."""

# Namespaces of the pretrained methods evaluated in a run, and of the baselines they
# are compared with. Each method namespace has its parameters in
# conf/base/parameters_pretraining.yml under the same name.
PRETRAINED = ("ijepa",)
BASELINES = ("raw_pixels", "random_init")
