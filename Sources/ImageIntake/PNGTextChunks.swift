/// Drops a PNG's text chunks (`tEXt`, `zTXt`, `iTXt`) before libvips reads the file.
///
/// libvips 8.14 (Debian bookworm) reads PNGs with libpng, and libpng inflates every compressed text chunk
/// while it reads the header, each up to the 50 MB that libvips allows a chunk (up to 1000 of them). The
/// intake opens a file several times (the header check, then the thumbnail, which opens it again), so a
/// 2.5 MB upload of compressed text cost seconds of CPU before a pixel was looked at. libvips makes its
/// libpng reader internally and sets that limit itself, so neither can be told to skip them from here;
/// and the intake has no use for text: the PNG it writes carries no metadata.
///
/// Only the chunk list is walked (lengths and types, no inflation, no CRC check); every other chunk,
/// and anything the walk cannot follow (a truncated chunk, bytes after `IEND`), is kept byte for byte,
/// so libvips still sees and refuses a corrupt file as before.
enum PNGTextChunks {
    static let signature: [UInt8] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]
    static let textTypes: Set<[UInt8]> = [Array("tEXt".utf8), Array("zTXt".utf8), Array("iTXt".utf8)]
    private static let end = Array("IEND".utf8)

    /// The PNG without its text chunks; nil when `bytes` is not a PNG or has none (nothing to copy).
    static func stripped(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= signature.count, bytes.starts(with: signature) else { return nil }
        var dropped: [Range<Int>] = []
        var offset = signature.count
        // length (4, big-endian), type (4), data (length), CRC (4)
        while bytes.count - offset >= 12 {
            let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            guard length <= bytes.count - offset - 12 else { break }
            let type = Array(bytes[offset + 4..<offset + 8])
            let next = offset + 12 + length
            if textTypes.contains(type) {
                dropped.append(offset..<next)
            }
            if type == end { break }
            offset = next
        }
        guard !dropped.isEmpty else { return nil }
        var kept: [UInt8] = []
        kept.reserveCapacity(bytes.count - dropped.reduce(0) { $0 + $1.count })
        var from = 0
        for range in dropped {
            kept.append(contentsOf: bytes[from..<range.lowerBound])
            from = range.upperBound
        }
        kept.append(contentsOf: bytes[from...])
        return kept
    }
}
