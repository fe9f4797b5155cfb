# Assemble a daemon's man page from its own part (vigil-<name>.8.in) and
# the parts every daemon shares (daemon-*.8.in), so that the common text is
# written once. In the page's own part:
#   .\" set KEY VALUE        defines @KEY@ (VALUE: the rest of the line, may be empty)
#   .\" include FRAGMENT     is replaced by the file FRAGMENT (in dir)
# then every @KEY@ of the result is replaced by its VALUE; an @KEY@ left
# undefined is an error.
#   awk -v dir=DIR -f assemble.awk vigil-<name>.8.in > vigil-<name>.8
function emit(line,    key, out, rest) {
        out = ""
        rest = line
        while (match(rest, /@[a-z_]+@/)) {
                key = substr(rest, RSTART + 1, RLENGTH - 2)
                if (!(key in value)) {
                        printf "%s: @%s@ is not set\n", FILENAME, key > "/dev/stderr"
                        failed = 1
                        exit 1
                }
                out = out substr(rest, 1, RSTART - 1) value[key]
                rest = substr(rest, RSTART + RLENGTH)
        }
        print out rest
}
/^\.\\" set [a-z_]+( |$)/ {
        key = $3
        line = $0
        sub(/^\.\\" set [a-z_]+ ?/, "", line)
        value[key] = line
        next
}
/^\.\\" include [A-Za-z0-9_.-]+$/ {
        file = dir "/" $3
        while ((getline line < file) > 0)
                emit(line)
        if (close(file) != 0) {
                printf "%s: cannot read %s\n", FILENAME, file > "/dev/stderr"
                failed = 1
                exit 1
        }
        next
}
{ emit($0) }
END { if (failed) exit 1 }
