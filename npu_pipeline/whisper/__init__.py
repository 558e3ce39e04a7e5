"""Whisper on npu_pipeline: weights from a CTranslate2 directory, audio, log-mel, a float reference.

- :mod:`npu_pipeline.whisper.ct2_model` reads a CTranslate2 Whisper model directory
  (``model.bin``, ``config.json``, ``tokenizer.json``) with numpy.
- :mod:`npu_pipeline.whisper.audio` reads 16 kHz mono WAV with the standard library.
- :mod:`npu_pipeline.whisper.mel` computes Whisper's log-mel spectrogram with numpy.
- :mod:`npu_pipeline.whisper.float_encoder` is the float32 numpy encoder that
  the int8 encoder is checked against.
- :mod:`npu_pipeline.whisper.ct2_runtime` runs CTranslate2's own encoder and decoder
  (the ``whisper`` extra: ``pip install "npu-pipeline[whisper]"``).
- :mod:`npu_pipeline.whisper.wer` scores a transcript against its known text.
- :mod:`npu_pipeline.whisper.synthetic` makes seeded random weights of any Whisper size.

See docs/whisper.md.
"""
