import Foundation
import Testing

@testable import I2VHTTP

@Suite struct BodySpoolTests {
    /// However much arrives, no more than `memoryLimit` of it is in memory, and it reads back whole and in
    /// order; the file behind it is never visible in the directory.
    @Test func aLargeBodyWaitsInAFileAndReadsBackWhole() throws {
        let directory = try TemporaryDirectory()
        let spool = BodySpool(directory: directory.url.appending(path: "uploads"))
        var sent: [UInt8] = []
        for index in 0..<200 {
            let piece = [UInt8](repeating: UInt8(index % 251), count: 7_919)
            try spool.append(piece)
            sent += piece
            #expect(spool.bytesInMemory <= BodySpool.memoryLimit, "after \(sent.count) bytes")
        }
        #expect(spool.count == sent.count)
        let listed = try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "uploads").path)
        #expect(listed.isEmpty, "\(listed)")
        #expect(try spool.finish() == sent)
    }

    /// A body under the memory limit never touches the disk.
    @Test func aSmallBodyStaysInMemory() throws {
        let directory = try TemporaryDirectory()
        let spool = BodySpool(directory: directory.url.appending(path: "uploads"))
        let body = Array(#"{"prompt":"a cat"}"#.utf8)
        try spool.append(body)
        #expect(try spool.finish() == body)
        #expect(!FileManager.default.fileExists(atPath: directory.url.appending(path: "uploads").path))
    }
}
