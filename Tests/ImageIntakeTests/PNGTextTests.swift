import I2VTestSupport
import Testing

@testable import ImageIntake

extension IntakeSuites {
    @Suite("PNG text chunks")
    struct PNGTextTests {
        static let plain = TestImages.encode(TestImages.redBlue(width: 320, height: 240), .png)

        /// Text chunks of each kind, before and after the image data.
        static func annotated(_ png: [UInt8]) -> [UInt8] {
            let ztxt = PNGChunk.make("zTXt", Array("Comment".utf8) + [0, 0] + Deflate.zeros(count: 1 + 258 * 40))
            let text = PNGChunk.make("tEXt", Array("Title\0red and blue".utf8))
            let itxt = PNGChunk.make("iTXt", Array("Author\0\0\0en\0Autor\0somebody".utf8))
            let withHeaderText = PNGChunk.inserting([text, ztxt], into: png, before: "IDAT")
            return PNGChunk.inserting([itxt, ztxt], into: withHeaderText, before: "IEND")
        }

        @Test("text chunks are dropped and every other byte is kept")
        func stripping() throws {
            let annotated = Self.annotated(Self.plain)
            #expect(annotated.count > Self.plain.count)
            #expect(PNGTextChunks.stripped(annotated) == Self.plain)
            // Nothing to drop, or not a PNG: no copy is made.
            #expect(PNGTextChunks.stripped(Self.plain) == nil)
            #expect(PNGTextChunks.stripped(Array("GIF89a".utf8)) == nil)
            #expect(PNGTextChunks.stripped([]) == nil)

            // Bytes after IEND, and a chunk that runs past the end of the file, reach libvips as they were,
            // so it refuses what is corrupt exactly as it did before.
            let trailer: [UInt8] = Array("trailing".utf8)
            #expect(PNGTextChunks.stripped(annotated + trailer) == Self.plain + trailer)
            // The signature and IHDR (33 bytes), then half a text chunk.
            let runsPastEnd = Array(Self.plain.prefix(33)) + Array(PNGChunk.make("zTXt", Array(repeating: 7, count: 100)).prefix(50))
            #expect(PNGTextChunks.stripped(runsPastEnd) == nil)
        }

        @Test("a PNG with text chunks is still accepted, with its pixels")
        func annotatedIsAccepted() async throws {
            let image = try await withIntake { intake in
                try await intake.prepare(imageBytes: Self.annotated(Self.plain), size: .auto, planner: p480)
            }
            #expect(image.sourceFormat == "png")
            #expect(image.sourceWidth == 320 && image.sourceHeight == 240)
            let decoded = TestImages.decode(image.png)
            #expect(decoded.pixel(decoded.width / 8, decoded.height / 2, isNear: red))
            #expect(decoded.pixel(decoded.width - 1 - decoded.width / 8, decoded.height / 2, isNear: blue))
        }

        /// 64 zTXt chunks of 64 KiB, each inflating to 64 MiB (4 MB in all). libpng inflated each up to the
        /// 50 MB libvips allows, on each of the four times the intake's libvips calls open a PNG: 12 GB of
        /// zeros, more than a minute of CPU on a 2-core test machine. Unread, they cost a copy of the file.
        /// The bound is far above what the prepare takes (milliseconds) and far below what inflating took.
        @Test("compressed text is not inflated: a PNG carrying gigabytes of it is prepared at once")
        func compressedTextIsNotInflated() async throws {
            let bomb = PNGChunk.make("zTXt", Array("Comment".utf8) + [0, 0] + Deflate.zeros(count: 1 + 258 * 260_111))
            let hostile = PNGChunk.inserting(Array(repeating: bomb, count: 64), into: Self.plain, before: "IDAT")
            #expect(hostile.count > 4_000_000)
            let (image, elapsed) = try await measure {
                try await withIntake { intake in
                    try await intake.prepare(imageBytes: hostile, size: .auto, planner: p480)
                }
            }
            #expect(image.sourceWidth == 320 && image.sourceHeight == 240)
            #expect(elapsed < .seconds(10), "took \(elapsed)")
        }
    }
}

/// Builds PNG chunks for tests.
enum PNGChunk {
    /// length, type, data, CRC of type and data.
    static func make(_ type: String, _ data: [UInt8]) -> [UInt8] { PNG.chunk(type, data) }

    /// `png` with `chunks` inserted before its first chunk of type `type`.
    static func inserting(_ chunks: [[UInt8]], into png: [UInt8], before type: String) -> [UInt8] {
        var offset = 8
        while offset + 8 <= png.count {
            let length = png[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            if Array(png[offset + 4..<offset + 8]) == Array(type.utf8) {
                return Array(png[..<offset]) + chunks.flatMap { $0 } + Array(png[offset...])
            }
            offset += 12 + length
        }
        fatalError("no \(type) chunk")
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * $0)) }
    }
}

/// A zlib stream of zeros at deflate's best ratio (about 1:1032), written by hand so the tests need no zlib:
/// one dynamic-Huffman block whose only codes are the literal 0, "copy 258 bytes" and end of block, and
/// whose only distance is 1. After the literal, each further 258 zeros cost two bits.
enum Deflate {
    /// `count` zeros; `count` is 1 plus a multiple of 258.
    static func zeros(count: Int) -> [UInt8] {
        precondition(count >= 1 && (count - 1) % 258 == 0)
        var bits = BitWriter()
        bits.put(1, 1)  // last block
        bits.put(2, 2)  // dynamic Huffman codes
        bits.put(286 - 257, 5)  // literal/length code lengths given: 286
        bits.put(1 - 1, 5)  // distance code lengths given: 1
        bits.put(18 - 4, 4)  // code-length code lengths given: 18, in the order below
        let codeLengthLengths: [Int: UInt32] = [18: 1, 1: 2, 2: 2]
        for symbol in [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1] {
            bits.put(codeLengthLengths[symbol] ?? 0, 3)
        }
        // Canonical codes for that: 18 -> 0, 1 -> 10, 2 -> 11. Symbol 18 repeats a zero length 11-138 times.
        func length(_ value: Int) { bits.code(value == 1 ? 0b10 : 0b11, 2) }
        func zeroLengths(_ times: Int) {
            bits.code(0, 1)
            bits.put(UInt32(times - 11), 7)
        }
        // Literal/length lengths: literal 0 -> 2, 1...255 unused, end of block (256) -> 2, 257...284 unused,
        // 258 bytes (285) -> 1; then the one distance code (distance 1) -> 1.
        length(2)
        zeroLengths(138)
        zeroLengths(117)
        length(2)
        zeroLengths(28)
        length(1)
        length(1)
        // Canonical codes: 285 -> 0, literal 0 -> 10, end of block -> 11; distance 1 -> 0.
        bits.code(0b10, 2)
        for _ in 0..<(count - 1) / 258 {
            bits.code(0, 1)
            bits.code(0, 1)
        }
        bits.code(0b11, 2)
        bits.flush()
        // Adler-32 of zeros: the byte sum stays 1, the sum of sums grows by 1 each byte.
        let adler = UInt32(count % 65521) << 16 | 1
        return [0x78, 0xda] + bits.bytes + PNGChunk.bigEndian(adler)
    }

    private struct BitWriter {
        var bytes: [UInt8] = []
        private var pending: UInt32 = 0
        private var pendingCount: UInt32 = 0

        /// `count` bits of `value`, least significant first (deflate's order for numbers).
        mutating func put(_ value: UInt32, _ count: UInt32) {
            pending |= value << pendingCount
            pendingCount += count
            while pendingCount >= 8 {
                bytes.append(UInt8(truncatingIfNeeded: pending))
                pending >>= 8
                pendingCount -= 8
            }
        }

        /// A Huffman code, most significant bit first (deflate's order for codes).
        mutating func code(_ code: UInt32, _ length: UInt32) {
            for bit in (0..<length).reversed() {
                put(code >> bit & 1, 1)
            }
        }

        mutating func flush() {
            if pendingCount > 0 {
                bytes.append(UInt8(truncatingIfNeeded: pending))
            }
            pending = 0
            pendingCount = 0
        }
    }
}
