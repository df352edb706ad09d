"""The registry of fusion strategies: name -> class. A new strategy is one ``fusion_<name>.py`` and one entry here."""

from .fusion_channel_concat import ChannelConcatFusion
from .fusion_cross_attention import CrossAttentionFusion
from .fusion_interface import Fusion
from .fusion_sequence_append import SequenceAppendFusion

FUSION_CLASSES: dict[str, type[Fusion]] = {
    cls.fusion_type: cls for cls in (ChannelConcatFusion, SequenceAppendFusion, CrossAttentionFusion)
}
DEFAULT_FUSION = ChannelConcatFusion.fusion_type
