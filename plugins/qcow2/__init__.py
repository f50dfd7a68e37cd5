"""snaptree's qcow2 backend (entry point ``qcow2``): not written yet."""
