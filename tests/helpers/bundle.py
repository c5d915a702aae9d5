"""The files of a patch model folder: what `build_bundle` writes, and so what a registered version stores."""

# in a fixed order, so tests parametrized over them collect the same way in every process
BUNDLE_FILES = (
    "MLmodel",
    "MANIFEST.json",  # hashes all the others
    "patch.json",
    "report.json",
    "report.html",
    "classes.json",
    "requirements.txt",
    "python_env.yaml",
    "sae/cfg.json",
    "sae/reference.json",
    "sae/sae_weights.safetensors",
)
