fn main() {
    cxx_build::bridge("src/bridge.rs")
        .std("c++17")
        .compile("rein-bridge");
    println!("cargo:rerun-if-changed=src/bridge.rs");
    println!("cargo:rerun-if-changed=include/completion.h");
}
