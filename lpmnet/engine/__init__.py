"""What runs any method: the device switch, the training engine and its losses, and file-level fusion."""
