"""fl_compression: federated training of compressed speech-recognition models."""
