#!/bin/bash
# Stop the devcloud and wipe its state (databases, keys, images, logs); venvs and caches are kept.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$HERE/down.sh"
rm -rf "${DC:?}"/{mysql,rabbitmq,keystone,glance,nova,neutron,novnc,state,etc,run,logs,clouds.yaml}
