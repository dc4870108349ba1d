#!/bin/sh
echo "${GREETING:-hi} from a kiln image"
