#!/usr/bin/env bash
# Compiles the Jetty peer (benches/jetty/src) into OUT_DIR with the installed JDK against
# Debian's jars (libjetty9-java, libservlet-api-java), and writes OUT_DIR/classpath, the full
# run-time class path, so that a caller runs:
#   java -cp "$(cat OUT_DIR/classpath)" pnsbench.PollServer PORT
# Usage: benches/jetty/build.sh OUT_DIR   (exit 1, naming what is missing, if a jar or javac is)
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
jars=/usr/share/java
# Every jar the server touches at run time; the unversioned names are Debian's stable symlinks.
needed="servlet-api jetty9-server jetty9-servlet jetty9-security jetty9-http jetty9-io jetty9-util jetty9-util-ajax"

command -v javac >/dev/null || { echo "missing: javac (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
cp=""
missing=""
for j in $needed; do
    if [ -f "$jars/$j.jar" ]; then
        cp="${cp:+$cp:}$jars/$j.jar"
    else
        missing="$missing $jars/$j.jar"
    fi
done
if [ -n "$missing" ]; then
    echo "missing:$missing (apt-get install libjetty9-java)" >&2
    exit 1
fi

mkdir -p "$out/classes"
rm -rf "$out/classes/pnsbench"
javac -Xlint:all -Werror -d "$out/classes" -cp "$cp" "$here"/src/pnsbench/*.java
echo "$(cd "$out" && pwd)/classes:$cp" > "$out/classpath"
echo "built $out/classes (run: java -cp \"\$(cat $out/classpath)\" pnsbench.PollServer PORT)"
