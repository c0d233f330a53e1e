#!/bin/sh
# Build ARX's library (src/main) from a checkout of arx-deidentifier/arx with javac, and this folder's ArxAdult.
#
#   benchmarks/arx/build_arx.sh ARX_CHECKOUT BUILD_DIR
#
# Prints the class path to run ArxAdult with (BUILD_DIR/classes:BUILD_DIR/prog:stubs:the jars of lib/ant).
# ARX's lib/ant holds every jar its core needs except pdfbox-app (the PDF certificate) and hadoop-core (used only
# through mahout's classifiers); stubs/ gives the few types of those two that javac needs. Neither is used here.
set -eu
arx=$(cd "$1" && pwd)
out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/classes" "$out/stubs" "$out/prog"
cp=$(find "$arx/lib/ant" -name '*.jar' ! -path '*/eclipse/*' | tr '\n' ':')
find "$here/stubs" -name '*.java' > "$out/stubs.txt"
javac -nowarn -encoding UTF-8 -d "$out/stubs" @"$out/stubs.txt"
find "$arx/src/main" -name '*.java' > "$out/sources.txt"
javac -nowarn -encoding UTF-8 -J-Xmx1500m -d "$out/classes" -cp "$cp$out/stubs" @"$out/sources.txt" 2>&1 \
    | grep -v '^Note:' >&2 || true
(cd "$arx/src/main" && find . -type f ! -name '*.java' -exec cp --parents {} "$out/classes/" \;)
javac -nowarn -d "$out/prog" -cp "$out/classes:$cp" "$here/ArxAdult.java"
echo "$out/prog:$out/classes:$out/stubs:$cp"
