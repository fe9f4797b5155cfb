# The system test under real systemd: packages built from this tree,
# installed in a systemd-nspawn machine (see tests/system/test-system.py).
# It skips itself (exit 77) without root, systemd-nspawn or a git work tree,
# and when the ports it needs are taken. test-rpm.sh builds rpm/vigil.spec
# with Debian's rpm (skipped without rpmbuild or a git work tree).
# test-packages.py builds the packages after an in-tree build (another
# prefix) and checks every path they name against the files they ship.
# test-fleet.py runs ansible/site.yml over SSH on four systemd-nspawn
# machines on a bridge of its own (skipped without root, ansible or
# systemd-nspawn; VIGIL_FLEET_TEST=0 skips it).
SYSTEM_TESTS = tests/system/test-system.py tests/system/test-packages.py tests/system/test-rpm.sh \
	tests/system/test-fleet.py
TESTS += $(SYSTEM_TESTS)
EXTRA_DIST += $(SYSTEM_TESTS)
