"""snaptree's lvm backend (entry point ``lvm``): not written yet."""
