"""snaptree's btrfs backend (entry point ``btrfs``): not written yet."""
