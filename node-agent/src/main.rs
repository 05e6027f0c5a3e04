fn main() {
    eprintln!("drove-agent: not yet");
}
