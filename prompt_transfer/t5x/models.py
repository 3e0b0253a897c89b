"""T5X's `t5x.models.EncoderDecoderModel`, as a gin name (t5x_habits.fold): its `decode_fn` and
`predict_batch_with_aux.num_decodes` are decoding.Decoding's method and beams."""

from __future__ import annotations


class EncoderDecoderModel:
    def __init__(
        self,
        module=None,
        input_vocabulary=None,
        output_vocabulary=None,
        optimizer_def=None,
        decode_fn=None,
        feature_converter_cls=None,
        label_smoothing=0.0,
        z_loss=0.0,
        loss_normalizing_factor=None,
    ):
        """Here only its bindings count (t5x_habits.fold)."""

    def predict_batch_with_aux(
        self,
        params=None,
        batch=None,
        rng=None,
        decoder_params=None,
        return_all_decodes=False,
        num_decodes=1,
        prompt_with_targets=False,
    ):
        """Here only its bindings count (t5x_habits.fold)."""
