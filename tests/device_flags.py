"""The XLA flag that gives a test process 8 fake CPU devices (set by conftest.py). Tests that start processes with
their own device count (the multi-process and sweep tests) remove it from the environment they pass on."""
FAKE_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"


def without_fake_devices(xla_flags: str) -> str:
    return xla_flags.replace(FAKE_DEVICES_FLAG, "").strip()
