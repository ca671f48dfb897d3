//! Compiles the long double arithmetic Redis' INCRBYFLOAT uses (csrc/long_double.c).

fn main() {
    println!("cargo:rerun-if-changed=csrc/long_double.c");
    cc::Build::new()
        .file("csrc/long_double.c")
        .warnings(true)
        .compile("tandem_long_double");
}
