"""Whisper on npu_pipeline: CTranslate2 weights, audio, log-mel, float and int8 encoders.

- :mod:`npu_pipeline.whisper.ct2_model` reads a CTranslate2 Whisper model directory
  (``model.bin``, ``config.json``, ``tokenizer.json``) with numpy.
- :mod:`npu_pipeline.whisper.audio` reads 16 kHz mono WAV with the standard library.
- :mod:`npu_pipeline.whisper.mel` computes Whisper's log-mel spectrogram with numpy.
- :mod:`npu_pipeline.whisper.float_encoder` is the float32 numpy encoder that
  the int8 encoder is checked against.
- :mod:`npu_pipeline.whisper.int8_encoder` is the encoder with every GEMM an
  int8 matmul on the pipeline (``await Int8Encoder.load(pipe, weights)``).
- :mod:`npu_pipeline.whisper.transcribe` turns a WAV file into text with it
  (``npu-pipeline transcribe``).
- :mod:`npu_pipeline.whisper.ct2_runtime` runs CTranslate2's own encoder and decoder
  (the ``whisper`` extra: ``pip install "npu-pipeline[whisper]"``).
- :mod:`npu_pipeline.whisper.wer` scores a transcript against its known text.
- :mod:`npu_pipeline.whisper.synthetic` makes seeded random weights of any Whisper size.

See docs/whisper.md.
"""
