"""Data set loaders (Fashion-MNIST IDX, ImageFolder) and the device-resident tensor pipeline."""
