"""What a run folder written by an older version needs to read (as timm keeps its model deprecations in one table):
config keys removed, moved or added since, a spec field removed, an ensemble layout no longer trained. What can no
longer be made says so in one line. Nothing here imports the rest of the package, so every layer may read it.
"""

from __future__ import annotations

# Config keys removed after they were measured as not paying (docs/journal.md, "Tried, not kept"), with the value
# under which they did nothing: a file that sets one to that value (as every complete config.toml written before the
# removal does) still reads; any other value is refused, since the run it asks for can no longer be made.
REMOVED_KEYS = {"train.tune_allocator": False, "train.compile": False, "data.small_crop": 0,
                "data.small_crop_epochs": 0}

# The data's location left the config: it belongs to the machine, not the experiment.
MOVED_KEYS = {"data.data_dir": "data.data_dir is no longer part of a config: where the data is belongs to the "
                                "machine, not the experiment; pass --data-dir DIR (or data= in Python) or set "
                                "$RESBUDGET_DATA_DIR"}


# Config keys added after run folders were written, with the value that describes an older run: its config.toml
# lacks the key, and reading it with today's default would claim what the run never had (a run trained before
# recipes carried a temperature had none).
ADDED_KEYS = {"train.temperature": 0.0, "train.temperature_source": ""}


# Ensemble layouts no longer trained or read: the folder a run of that kind leaves behind.
REMOVED_ENSEMBLE_MODES = {"together": "an ensemble trained in the removed 'together' mode (one net holding every "
                                      "member)"}


def drop_removed_spec_keys(data: dict) -> dict:
    """A model spec's fields without the removed ones, which still read where they name what the net now always
    does; ``ValueError`` (its message names the key) where they ask for what can no longer be built.
    stem_padding: a stem pads exactly when its kernel is odd ("same"), never otherwise ("valid"); "auto" said so."""
    if "stem_padding" not in data:
        return data
    data = dict(data)
    padding, kernel = data.pop("stem_padding"), data.get("stem_kernel", 3)
    implied = "same" if isinstance(kernel, int) and kernel % 2 else "valid"
    if padding not in ("auto", implied):
        raise ValueError(f"stem_padding {padding!r} was removed (a {kernel}x{kernel} stem is now always "
                         f"{implied!r}: odd kernels pad, even ones do not); drop the key")
    return data
