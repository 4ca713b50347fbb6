/// A PNG written byte by byte (stored deflate blocks), so a test controls every chunk: colour types,
/// palettes, and headers that lie about the size.
public struct PNG: Sendable {
    public static let signature: [UInt8] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]
    public var bytes: [UInt8]

    /// - Parameters:
    ///   - colourType: 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA.
    ///   - pixel: the samples of one pixel (a palette index for type 3).
    public init(width: Int, height: Int, colourType: UInt8, palette: [[UInt8]] = [], _ pixel: (_ x: Int, _ y: Int) -> [UInt8]) {
        var raw: [UInt8] = []
        for y in 0..<height {
            raw.append(0)  // filter: none
            for x in 0..<width { raw.append(contentsOf: pixel(x, y)) }
        }
        var png = Self.signature
        png += Self.chunk("IHDR", Self.be32(width) + Self.be32(height) + [8, colourType, 0, 0, 0])
        if !palette.isEmpty { png += Self.chunk("PLTE", palette.flatMap { $0 }) }
        png += Self.chunk("IDAT", Self.zlibStored(raw))
        png += Self.chunk("IEND", [])
        bytes = png
    }

    public static func rgb(width: Int, height: Int, _ pixel: (_ x: Int, _ y: Int) -> [UInt8]) -> PNG {
        PNG(width: width, height: height, colourType: 2, pixel)
    }

    /// The same PNG with its IHDR claiming another size (CRC fixed, pixel data unchanged).
    public func claiming(width: Int, height: Int) -> [UInt8] {
        var png = bytes
        png.replaceSubrange(16..<24, with: Self.be32(width) + Self.be32(height))
        png.replaceSubrange(29..<33, with: Self.be32(Int(Self.crc32(png[12..<29]))))
        return png
    }

    public static func be32(_ value: Int) -> [UInt8] {
        [
            UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
            UInt8(truncatingIfNeeded: value),
        ]
    }

    public static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typed = Array(type.utf8) + data
        return be32(data.count) + typed + be32(Int(crc32(typed[...])))
    }

    public static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var rest = data[...]
        repeat {
            let block = rest.prefix(65_535)
            rest = rest.dropFirst(block.count)
            let count = block.count
            out += [rest.isEmpty ? 1 : 0, UInt8(count & 0xff), UInt8(count >> 8), UInt8(~count & 0xff), UInt8((~count >> 8) & 0xff)]
            out += block
        } while !rest.isEmpty
        var a: UInt32 = 1
        var b: UInt32 = 0
        for byte in data {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return out + be32(Int(b << 16 | a))
    }

    public static let crcTable: [UInt32] = (0..<256).map { (n: UInt32) -> UInt32 in
        var c = n
        for _ in 0..<8 { c = c & 1 == 1 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        for byte in bytes { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8) }
        return ~crc
    }
}
