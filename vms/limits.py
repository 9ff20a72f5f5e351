"""Limits of what members ask for, stated once: the forms, the API's serializers and the services share them."""

NAME_MAX = 63  # an instance name (one DNS label); a batch numbers it within this length
SNAPSHOT_NAME_MAX = 63
IMAGE_NAME_MAX = 100  # the name of an image captured from an instance
RAM_MIN_MIB = 64  # the least RAM a guest gets when its vCPUs/RAM are changed within the flavor
DISK_MIN_GIB = 1  # an extra disk
DISK_MAX_GIB = 4096
EXTRA_DISKS_MAX = 8  # extra disks per instance
FLAVOR_MINIMUMS = {"vcpus": 1, "ram_mib": 16, "disk_gib": 1}
