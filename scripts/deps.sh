#!/usr/bin/env bash
# Installs what the tests need beyond Go: qemu user emulation for the
# riscv64 smoke test. Idempotent; does nothing when it is already there.
set -euo pipefail
if scripts/find-qemu.sh riscv64 >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq qemu-user-static >/dev/null || $SUDO apt-get install -y -qq qemu-user >/dev/null
scripts/find-qemu.sh riscv64 >/dev/null
