"""The model's verbs: a prompted T5 scored, trained on, evaluated and asked for predictions.

encoder_decoder.py  loss, scores, rank classification, decoding (T5X's EncoderDecoderModel)
seqio_eval.py       SeqIO's Evaluator over rank classification or decoding, the task's metrics
inference.py        the rows to predict and one JSON record per row

May import: base, network, data, prompt, configure.
"""
