#!/usr/bin/env bash
# Checks the packages that scripts/package.sh built (run by `package.sh --check`, in CI):
# the files each holds and their modes, the conffiles, the maintainer scripts, lintian where
# the distribution has it, and the binaries run from a `dpkg -x` scratch root.
set -euo pipefail
dir=${1:?usage: check-packages.sh DIR-WITH-DEBS}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
fail() { echo "check-packages: $*" >&2; failed=1; }

# has DEB MODE PATH: the package holds PATH with that mode string (as dpkg-deb -c shows it).
has() {
  local line
  line=$(dpkg-deb --contents "$1" | awk -v p="./$3" '$6 == p { print $1 }')
  [ "$line" = "$2" ] || fail "$(basename "$1"): expected $3 with mode $2, found '${line:-nothing}'"
}

agent=$(ls "$dir"/rexec-agent_*.deb)
has "$agent" -rwxr-xr-x usr/bin/agent
has "$agent" -rw-r--r-- lib/systemd/system/rexec-agent.service
has "$agent" -rw-r--r-- etc/default/rexec-agent
has "$agent" -rw-r--r-- usr/share/man/man8/agent.8.gz
if dpkg-deb --contents "$agent" | grep -q '\./etc/rexec/'; then
  fail "rexec-agent ships files in /etc/rexec: keys never come in the package"
fi
dpkg-deb -e "$agent" "$scratch/agent-control"
grep -qx /etc/default/rexec-agent "$scratch/agent-control/conffiles" ||
  fail "rexec-agent: /etc/default/rexec-agent is not a conffile"
# The unit runs as the user its User= names; without one (root) no account is needed.
unit_user=$(dpkg-deb --fsys-tarfile "$agent" | tar -xO ./lib/systemd/system/rexec-agent.service | sed -n 's/^User=//p')
if [ -n "$unit_user" ] && ! grep -q "useradd --system.* $unit_user\$" "$scratch/agent-control/postinst"; then
  fail "rexec-agent: the unit runs as $unit_user but postinst does not create that system user"
fi
grep -q 'install -d -m 0700 .*/etc/rexec' "$scratch/agent-control/postinst" ||
  fail "rexec-agent: postinst does not create /etc/rexec with mode 0700"
for script in postinst prerm postrm; do
  sh -n "$scratch/agent-control/$script" || fail "rexec-agent: $script is not valid sh"
done

ctl=$(ls "$dir"/rexec-ctl_*.deb)
if [ -n "$ctl" ]; then
  has "$ctl" -rwxr-xr-x usr/bin/ctl
  has "$ctl" -rw-r--r-- usr/share/man/man1/ctl.1.gz
  has "$ctl" -rw-r--r-- usr/share/bash-completion/completions/ctl
  has "$ctl" -rw-r--r-- usr/share/zsh/vendor-completions/_ctl
  has "$ctl" -rw-r--r-- usr/share/fish/vendor_completions.d/ctl.fish
fi

if command -v lintian >/dev/null; then
  # initial-upload-closes-no-bugs is about uploads to Debian's archive, which these are not.
  lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs \
    "$agent" ${ctl:+"$ctl"} || fail "lintian found errors or warnings (above)"
else
  echo "check-packages: lintian is not installed: the packages were NOT linted" >&2
fi

root=$scratch/root
for deb in "$agent" ${ctl:+"$ctl"}; do dpkg -x "$deb" "$root"; done
"$root/usr/bin/agent" --version | grep -q '^agent ' || fail "agent --version from $root failed"
grep -q '^ExecStart=/usr/bin/agent --key-file /etc/rexec/keys \$AGENT_OPTS$' \
  "$root/lib/systemd/system/rexec-agent.service" || fail "the packaged unit's ExecStart is not the packaged binary"
zcat "$root/usr/share/man/man8/agent.8.gz" | grep -q '^\.TH agent 8' || fail "agent.8.gz is not agent(8)"
if [ -n "$ctl" ]; then
  "$root/usr/bin/ctl" --version | grep -q '^ctl ' || fail "ctl --version from $root failed"
  zcat "$root/usr/share/man/man1/ctl.1.gz" | grep -q '^\.TH ctl 1' || fail "ctl.1.gz is not ctl(1)"
fi
if command -v systemd-analyze >/dev/null; then
  # verify insists that ExecStart= names an executable: a copy runs the one just extracted.
  sed "s|^ExecStart=/usr/bin/agent |ExecStart=$root/usr/bin/agent |" \
    "$root/lib/systemd/system/rexec-agent.service" > "$scratch/rexec-agent.service"
  systemd-analyze verify --man=no "$scratch/rexec-agent.service" ||
    fail "systemd-analyze verify refused the packaged unit"
fi

[ "$failed" = 0 ] || exit 1
echo "check-packages: ok: $(basename "$agent")${ctl:+ $(basename "$ctl")}"
