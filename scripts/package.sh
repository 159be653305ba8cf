#!/usr/bin/env bash
# Builds the Debian packages rexec-agent and rexec-ctl into target/debian/ with cargo-deb.
#
#   scripts/package.sh            build the release binaries, the assets and both packages
#   scripts/package.sh --check    then check them: contents, lintian (where installed), and
#                                 the binaries run from a dpkg -x scratch root
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
assets=$target_dir/release/deb-assets

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi

cargo build --release --locked -p agent -p ctl
rm -rf "$assets" && mkdir -p "$assets"

# The repository's unit runs /usr/local/bin/agent (a `cargo install`); the package's runs
# /usr/bin/agent with options from /etc/default/rexec-agent, once a key file exists.
exec_start='ExecStart=/usr/local/bin/agent --key-file /etc/rexec/keys --listen 0.0.0.0:50007'
if ! grep -qxF "$exec_start" agent/agent.service; then
  echo "package.sh: agent/agent.service has no line '$exec_start' to rewrite for the package" >&2
  exit 1
fi
{
  echo "# rexec-agent.service, from the rexec-agent package. Override with: systemctl edit rexec-agent"
  echo "# Options: /etc/default/rexec-agent. Keys: /etc/rexec/keys (the unit waits for it)."
  sed -e '/^# systemd unit for the rexec agent/,/^# docs\/deploy.md walks/d' \
      -e 's|^\[Unit\]$|[Unit]\nConditionPathExists=/etc/rexec/keys\nDocumentation=man:agent(8)|' \
      -e "s|^${exec_start}\$|EnvironmentFile=-/etc/default/rexec-agent\nExecStart=/usr/bin/agent --key-file /etc/rexec/keys \$AGENT_OPTS|" \
      agent/agent.service
} > "$assets/rexec-agent.service"

# Debian wants a changelog in Debian's format; the project's own is CHANGELOG.md.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
for package in rexec-agent rexec-ctl; do
  mkdir -p "$assets/$package"
  printf '%s (%s-1) unstable; urgency=medium\n\n  * Release %s; the changes are in the project'"'"'s CHANGELOG.md.\n\n -- rexec developers <rexec@example.org>  %s\n' \
    "$package" "$version" "$version" "$(date -uR -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")" |
    gzip -9n > "$assets/$package/changelog.Debian.gz"
done

cargo xtask man "$assets" >/dev/null
for page in "$assets"/*.[0-9]; do gzip -9n "$page"; done

ctl=$target_dir/release/ctl
"$ctl" completions bash > "$assets/ctl.bash"
"$ctl" completions zsh > "$assets/_ctl"
"$ctl" completions fish > "$assets/ctl.fish"

cargo deb --no-build --locked -p agent
cargo deb --no-build --locked -p ctl
echo "package.sh: built" "$target_dir"/debian/rexec-{agent,ctl}_*.deb

[ "${1:-}" = --check ] || exit 0
exec scripts/check-packages.sh "$target_dir/debian"
