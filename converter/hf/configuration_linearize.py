"""The configuration of a Linearize export (https://github.com/linearize): the source model's config.json keys
plus a `linearize` object naming the recipe, its parameters, the layers kept as softmax attention and the source
architecture. Loaded by transformers through `auto_map` with `trust_remote_code=True`; kept in the Linearize
repository (converter/hf/) and copied, with its sha256 recorded, into every export."""
from transformers import AutoConfig, PreTrainedConfig

# Keys of config.json that describe the export, not the source model's decoder.
_EXPORT_KEYS = ("linearize", "model_type", "architectures", "auto_map", "transformers_version")


class LinearizeConfig(PreTrainedConfig):
    model_type = "linearize"

    def __init__(self, linearize=None, **kwargs):
        self.linearize = linearize or {}
        super().__init__(**kwargs)

    @property
    def recipe(self):
        return self.linearize["recipe"]

    @property
    def softmax_layers(self):
        return set(self.linearize.get("softmax_layers", []))

    def source_config(self):
        """The source family's own config (LlamaConfig, Gemma3TextConfig, ...) from the same keys."""
        fields = {k: v for k, v in self.to_dict().items() if k not in _EXPORT_KEYS}
        return AutoConfig.for_model(self.linearize["source"]["model_type"], **fields)


__all__ = ["LinearizeConfig"]
