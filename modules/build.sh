#!/usr/bin/env bash
# Builds modules/build/librein_modules.so, the agent module library: the Rust
# staticlib (crate rein-bridge, release) plus the C++ shim in modules/src, compiled
# against the agent's own Mesos headers. This is the only place that knows where
# Mesos is; see modules/README.md ("Building") for the variables:
#   MESOS_HOME          install prefix of the agent's Mesos (required)
#   MESOS_BUILD_DIR     its build tree, for generated headers an install may lack
#   MESOS_SRC_DIR       its source tree (default: the parent of MESOS_BUILD_DIR when
#                       that holds include/mesos/module.hpp)
#   MESOS_INCLUDE_DIRS  extra include dirs, colon-separated (stout, libprocess,
#                       boost, glog, picojson, rapidjson, protobuf, ...)
#   MESOS_CXX_STD       the -std Mesos was compiled with (default c++11)
#   MESOS_CPPFLAGS      extra preprocessor flags Mesos was compiled with
#   CXX                 the compiler (default g++; must be the agent's)
# Without MESOS_HOME it prints "SKIPPED: MESOS_HOME is not set" and exits 0: callers
# must report that as a skip, never as a pass.
set -euo pipefail

if [[ -z "${MESOS_HOME:-}" ]]; then
  echo "SKIPPED: MESOS_HOME is not set (modules/build.sh needs the agent's Mesos install prefix)"
  exit 0
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/modules/src"
# Everything built goes to modules/build/ (ignored by git): objects in obj/, the
# library at modules/build/librein_modules.so (REIN_MODULE_LIB overrides).
out="$repo/modules/build/obj"
lib_path="${REIN_MODULE_LIB:-$repo/modules/build/librein_modules.so}"
mkdir -p "$out" "$(dirname "$lib_path")"
# One build at a time in the shared object directory (the lanes may build at once).
exec 9>"$out/.lock"
flock 9
cxx="${CXX:-g++}"
std="${MESOS_CXX_STD:-c++11}"

die() { echo "modules/build.sh: $*" >&2; exit 1; }
[[ -f "$MESOS_HOME/include/mesos/module.hpp" || -n "${MESOS_BUILD_DIR:-}${MESOS_SRC_DIR:-}" ]] ||
  die "no include/mesos/module.hpp under MESOS_HOME=$MESOS_HOME (set MESOS_SRC_DIR/MESOS_BUILD_DIR?)"

# Include directories, most specific first.
includes=()
add_include() { [[ -d "$1" ]] && includes+=("-I$1"); return 0; }
add_include "$MESOS_HOME/include"
src_dir="${MESOS_SRC_DIR:-}"
if [[ -n "${MESOS_BUILD_DIR:-}" ]]; then
  add_include "$MESOS_BUILD_DIR/include"
  if [[ -z "$src_dir" && -f "$MESOS_BUILD_DIR/../include/mesos/module.hpp" ]]; then
    src_dir="$(cd "$MESOS_BUILD_DIR/.." && pwd)"
  fi
fi
if [[ -n "$src_dir" ]]; then
  add_include "$src_dir/include"
  add_include "$src_dir/3rdparty/stout/include"
  add_include "$src_dir/3rdparty/libprocess/include"
fi
if [[ -n "${MESOS_BUILD_DIR:-}" ]]; then
  # Bundled third-party headers, unpacked in the build tree.
  for d in "$MESOS_BUILD_DIR"/3rdparty/picojson-* "$MESOS_BUILD_DIR"/3rdparty/boost-* \
           "$MESOS_BUILD_DIR"/3rdparty/glog-*/src "$MESOS_BUILD_DIR"/3rdparty/rapidjson-*/include; do
    add_include "$d"
  done
fi
IFS=: read -r -a extra <<<"${MESOS_INCLUDE_DIRS:-}"
for d in "${extra[@]}"; do [[ -n "$d" ]] && add_include "$d"; done

# The C++ ABI must be the agent's: detect it from libmesos when it is there.
abi_flag=()
libmesos="$(ls "$MESOS_HOME"/lib/libmesos.so "$MESOS_HOME"/lib/libmesos-*.so 2>/dev/null | head -1 || true)"
if [[ -n "$libmesos" ]]; then
  # (grep -c reads everything: grep -q would end the pipe early and, with pipefail,
  # turn a match into a failure.)
  if [[ "$(nm -D --defined-only "$libmesos" | grep -c '__cxx11')" != 0 ]]; then abi=1; else abi=0; fi
  abi_flag=("-D_GLIBCXX_USE_CXX11_ABI=$abi")
  if [[ "$abi" == 0 ]]; then
    # The staticlib's own C++ (cxx's runtime and bridge) must match too.
    export CXXFLAGS="${CXXFLAGS:-} -D_GLIBCXX_USE_CXX11_ABI=0"
  fi
fi

echo "modules/build.sh: building the Rust staticlib (release)"
eval "$("$repo/modules/staticlib")"
cp "$REIN_STATICLIB" "$out/librein_modules.a"
IFS=: read -r -a cxx_dirs <<<"$REIN_CXX_INCLUDES"
for d in "${cxx_dirs[@]}"; do includes+=("-I$d"); done

symbols=(rein_NetClsIsolator rein_BlkioIsolator rein_DiskIsolator rein_ContainerLogger)

read -r -a cppflags <<<"${MESOS_CPPFLAGS:-}"
objects=()
for file in "$src"/*.cpp; do
  obj="$out/$(basename "${file%.cpp}").o"
  echo "modules/build.sh: compiling $(basename "$file")"
  "$cxx" -std="$std" -fPIC -O2 -g0 -Wall -Wno-unused-local-typedefs -Wno-deprecated-declarations -D__STDC_FORMAT_MACROS \
    "${abi_flag[@]}" "${cppflags[@]}" "${includes[@]}" -c "$file" -o "$obj"
  objects+=("$obj")
done

map="$out/exports.map"
{
  echo "{"
  echo "  global:"
  for s in "${symbols[@]}"; do echo "    $s;"; done
  echo "  local: *;"
  echo "};"
} >"$map"
undefined=()
for s in "${symbols[@]}"; do undefined+=("-Wl,--undefined=$s"); done

# Mesos, protobuf and glog symbols stay undefined: they resolve from the agent's
# libmesos at dlopen. Never link a second protobuf or glog into the module.
link() {
  "$cxx" -shared -o "$1" "${undefined[@]}" "${objects[@]}" "$out/librein_modules.a" \
    -Wl,--version-script="$map" -Wl,--gc-sections "${@:2}" -lpthread -ldl
}
link "$out/librein_modules.so.tmp"

# Check on a scratch copy that every undefined symbol exists in the agent's libraries.
if [[ -n "$libmesos" ]]; then
  if ! link "$out/check.so" -Wl,-z,defs -L"$(dirname "$libmesos")" \
       -Wl,-rpath-link,"$(dirname "$libmesos")" -lmesos -lprotobuf -lglog 2>"$out/check.log"; then
    grep -m 20 'undefined reference' "$out/check.log" >&2 || cat "$out/check.log" >&2
    die "the module references symbols the agent's libraries do not define (see $out/check.log)"
  fi
  rm -f "$out/check.so"
fi

mv "$out/librein_modules.so.tmp" "$lib_path"
exported="$(nm -D --defined-only "$lib_path" | awk '$2 != "U" {print $3}' | sort | tr '\n' ' ')"
echo "modules/build.sh: exports: $exported"
for s in "${symbols[@]}"; do
  [[ " $exported " == *" $s "* ]] || die "$s is not exported"
done
echo "modules/build.sh: built $lib_path"
