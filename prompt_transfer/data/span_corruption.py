"""T5's unsupervised objectives as SeqIO preprocessors.

Span corruption (Raffel et al. 2020, Sec. 3.1.4): text is tokenized, concatenated and cut into
pieces of the raw length that, after corruption, fills `inputs` exactly. In each piece 15% of
the tokens, in spans of mean length 3, are replaced: each span by one sentinel
(`<extra_id_0>`, `<extra_id_1>`, ...) in the input, and the target lists the sentinels each
followed by the tokens it replaced.

Prefix LM, the "LM adaptation" that makes a span-corruption T5 promptable (Lester et al. 2021,
Sec. 3.2): pieces of `inputs` length are split at a uniformly random point; the input is the
prefix and the target its continuation (trimmed to the target length).
"""

from __future__ import annotations

from prompt_transfer.base.tf_import import import_seqio, import_tensorflow

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def lengths_after_corruption(
    tokens_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(inputs length, targets length), EOS included, for a piece of `tokens_length` tokens."""
    noise = int(round(tokens_length * noise_density))
    spans = max(int(round(noise / mean_span)), 1)
    return tokens_length - noise + spans + 1, noise + spans + 1


def raw_length_for(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(raw piece length, targets length) whose corrupted input is at most `inputs_length`."""
    tokens = inputs_length - 1
    while lengths_after_corruption(tokens + 1, noise_density, mean_span)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths_after_corruption(tokens, noise_density, mean_span)[1]


def random_spans_noise_mask(
    length, seeds, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_NOISE_SPAN_LENGTH
):
    """[length] bool: True at corrupted positions; noise and non-noise spans alternate,
    starting with non-noise. `seeds` is [2, 2] int32 (stateless randomness)."""
    tf, seqio = import_tensorflow(), import_seqio()
    original = length
    length = tf.maximum(length, 2)
    noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    noise = tf.minimum(tf.maximum(noise, 1), length - 1)
    spans = tf.maximum(tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_span), tf.int32), 1)

    def segment_lengths(items, segments, seed):
        """Split `items` into `segments` non-empty segments at random."""
        first = tf.pad(
            seqio.utils.stateless_shuffle(
                tf.cast(tf.range(items - 1) < segments - 1, tf.int32), seed
            ),
            [[1, 0]],
        )
        return tf.math.segment_sum(tf.ones_like(first), tf.cumsum(first))

    noise_lengths = segment_lengths(noise, spans, seeds[0])
    keep_lengths = segment_lengths(length - noise, spans, seeds[1])
    interleaved = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1), [spans * 2])
    starts = tf.cumsum(interleaved)[:-1]
    span_number = tf.cumsum(tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, length))
    return tf.equal(span_number % 2, 1)[:original]


def sentinel_spans(tokens, noise_mask, vocab_size: int):
    """Replace each run of masked tokens by one sentinel (counting down from the top id)."""
    tf = import_tensorflow()
    previous = tf.pad(noise_mask[:-1], [[1, 0]])
    first = noise_mask & ~previous
    sentinels = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
    tokens = tf.where(first, sentinels, tokens)
    return tf.boolean_mask(tokens, ~(noise_mask & previous))


def split_to_pieces(piece_length: int):
    """Preprocessor: concatenate the tokenized `targets` of many examples and cut them into
    pieces of `piece_length` tokens (the last, shorter piece is dropped)."""

    def fn(ds):
        tokens = ds.map(lambda ex: ex["targets"]).unbatch()
        return tokens.batch(piece_length, drop_remainder=True).map(lambda t: {"targets": t})

    return fn


def span_corruption(vocab_size: int):
    """Preprocessor on pieces of tokens: `inputs` with sentinels, `targets` with the spans."""
    seqio = import_seqio()

    @seqio.map_over_dataset(num_seeds=2)
    def corrupt(ex, seeds):
        tokens = ex["targets"]
        mask = random_spans_noise_mask(import_tensorflow().size(tokens), seeds)
        return {
            "inputs": sentinel_spans(tokens, mask, vocab_size),
            "targets": sentinel_spans(tokens, ~mask, vocab_size),
        }

    return corrupt


def _chain(text_key: str, objective):
    """text -> tokens -> `objective(ds, sequence_length, vocabulary)` -> EOS appended."""
    seqio = import_seqio()
    tf = import_tensorflow()

    def to_targets(ds):
        return ds.map(lambda ex: {"targets": ex[text_key]})

    def apply(ds, sequence_length, output_features):
        ds = objective(ds, sequence_length, output_features["targets"].vocabulary)
        return ds.map(lambda ex: {k: tf.cast(v, tf.int32) for k, v in ex.items()})

    return [
        to_targets,
        seqio.preprocessors.tokenize,
        apply,
        seqio.preprocessors.append_eos_after_trim,
    ]


def preprocessors(text_key: str = "text"):
    """The span-corruption chain after a source that yields `text_key`: SeqIO's sequence
    lengths decide the piece length (T5: 568 raw tokens for 512 input positions)."""

    def objective(ds, sequence_length, vocabulary):
        piece = raw_length_for(sequence_length["inputs"])[0] if sequence_length else 568
        return span_corruption(vocabulary.vocab_size)(split_to_pieces(piece)(ds))

    return _chain(text_key, objective)


def prefix_lm_split():
    """Preprocessor on pieces of tokens: a random prefix as `inputs`, the rest as `targets`."""
    seqio = import_seqio()

    @seqio.map_over_dataset(num_seeds=1)
    def split(ex, seed):
        tf = import_tensorflow()
        tokens = ex["targets"]
        length = tf.size(tokens)
        cut = tf.random.stateless_uniform([], seed, minval=1, maxval=length, dtype=tf.int32)
        return {"inputs": tokens[:cut], "targets": tokens[cut:]}

    return split


def prefix_lm_preprocessors(text_key: str = "text"):
    """The prefix-LM chain after a source that yields `text_key`: pieces one token shorter than
    `inputs` (room for EOS), split at random."""

    def objective(ds, sequence_length, vocabulary):
        piece = sequence_length["inputs"] - 1 if sequence_length else 511
        return prefix_lm_split()(split_to_pieces(piece)(ds))

    return _chain(text_key, objective)
