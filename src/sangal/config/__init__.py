"""Typed configuration: a dataclass tree (``schema``), its allowed values (``checks``), YAML and dotted overrides
(``load``). The only place configuration is parsed: the library takes explicit arguments, the CLI resolves one
``Config`` and passes its parts down."""

from sangal.config.checks import CHOICES, RANGES, validate
from sangal.config.load import (
    dump_yaml,
    from_dict,
    given_keys,
    load_config,
    parse_override,
    parse_pretrained,
    to_dict,
    with_decided,
    with_overrides,
)
from sangal.config.schema import (
    AttrTrainConfig,
    Config,
    DataConfig,
    DistillConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    StudyConfig,
    TrainConfig,
)

__all__ = ["CHOICES", "RANGES", "AttrTrainConfig", "Config", "DataConfig", "DistillConfig",
           "EvalConfig", "LossConfig", "ModelConfig", "OptimConfig", "StudyConfig", "TrainConfig", "dump_yaml",
           "from_dict", "given_keys", "load_config", "parse_override", "parse_pretrained", "to_dict", "validate",
           "with_decided", "with_overrides"]
