import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOPosix
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// Byte ranges, HEAD and conditional requests on `/videos/<id>.mp4`: the range parser on its own, the
/// GET/HEAD decision on its own, then the same cases over a real loopback connection.
@Suite struct VideoRangeTests {
    // MARK: - Range parser

    @Test(arguments: [
        ("bytes=0-4", 0...4),
        ("bytes=3-3", 3...3),
        ("bytes=5-", 5...9),
        ("bytes=0-", 0...9),
        ("bytes=9-", 9...9),
        ("bytes=-3", 7...9),
        ("bytes=-1", 9...9),
        ("bytes=-10", 0...9),
        ("bytes=-11", 0...9),
        ("bytes=-99999999999999999999999", 0...9),
        ("bytes=8-100", 8...9),
        ("bytes=0-99999999999999999999999", 0...9),
        ("Bytes=2-4", 2...4),
        ("bytes=2-4, ", 2...4),
        ("bytes= 2-4", 2...4),
    ])
    func satisfiableRangesResolveToTheRightBytesOfATenByteFile(header: String, expected: ClosedRange<Int>) throws {
        let range = try #require(ByteRange.parse(header), "\(header) did not parse")
        #expect(range.resolve(size: 10) == expected, "\(header)")
    }

    @Test(arguments: [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=999999999-", 10),
        ("bytes=99999999999999999999999-", 10),
        ("bytes=-0", 10),
        ("bytes=-000", 10),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-5", 0),
        ("bytes=-0", 0),
    ])
    func unsatisfiableRangesResolveToNothing(header: String, size: Int) throws {
        let range = try #require(ByteRange.parse(header), "\(header) did not parse")
        #expect(range.resolve(size: size) == nil, "\(header) on \(size) bytes")
    }

    @Test(arguments: [
        "", "bytes", "bytes=", "bytes=-", "bytes=5-3", "items=0-4", "bytes 0-4", "bytes=a-b", "bytes=0-x",
        "bytes=+1-2", "bytes=1-+2", "bytes=0x1-2", "bytes=1-2-3", "bytes=--1", "bytes=1", "bytes=0-4,6-8",
        "bytes=0-1, -2", "bytes=,", "bytes=١-٢",
    ])
    func malformedOrMultipleRangesAreIgnored(header: String) {
        #expect(ByteRange.parse(header) == nil, "\(header)")
    }

    @Test func eachFormParsesToItsCase() {
        #expect(ByteRange.parse("bytes=3-7") == .from(first: 3, last: 7))
        #expect(ByteRange.parse("bytes=3-") == .from(first: 3, last: nil))
        #expect(ByteRange.parse("bytes=-7") == .suffix(length: 7))
        #expect(ByteRange.parse("bytes=-0") == .suffix(length: 0))
        #expect(ByteRange.parse("bytes=007-0010") == .from(first: 7, last: 10))
    }

    // MARK: - HTTP dates

    @Test func httpDatesFormatAsIMFFixdateAndParseInEveryForm() {
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.format(951_782_400) == "Tue, 29 Feb 2000 00:00:00 GMT")
        #expect(HTTPDate.format(4_102_444_799) == "Thu, 31 Dec 2099 23:59:59 GMT")
        #expect(HTTPDate.parse("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777)
        #expect(HTTPDate.parse("Sunday, 06-Nov-94 08:49:37 GMT") == 784_111_777)
        #expect(HTTPDate.parse("Sun Nov  6 08:49:37 1994") == 784_111_777)
        for seconds in [0, 1, 86_399, 951_782_400, 1_700_000_000, 4_102_444_799] {
            #expect(HTTPDate.parse(HTTPDate.format(seconds)) == seconds)
        }
        for text in ["", "yesterday", "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST"] {
            #expect(HTTPDate.parse(text) == nil, "\(text)")
        }
    }

    // MARK: - GET/HEAD decision

    static let modified = 1_700_000_000
    static let tag = "\"\(String(modified, radix: 16))-\(String(100, radix: 16))\""

    @Test func theAnswerCarriesValidatorsAndAdvertisesRanges() {
        let whole = VideoAnswer(request: [:], size: 100, modified: Self.modified)
        #expect(whole.status == .ok)
        #expect(whole.bytes == 0...99)
        #expect(whole.headers[.contentLength] == "100")
        #expect(whole.headers[.contentType] == "video/mp4")
        #expect(whole.headers[.acceptRanges] == "bytes")
        #expect(whole.headers[.eTag] == Self.tag)
        #expect(whole.headers[.lastModified] == "Tue, 14 Nov 2023 22:13:20 GMT")
        #expect(whole.headers[.contentRange] == nil)

        let empty = VideoAnswer(request: [:], size: 0, modified: Self.modified)
        #expect(empty.status == .ok && empty.bytes == nil && empty.headers[.contentLength] == "0")
        let emptyRange = VideoAnswer(request: [.range: "bytes=0-"], size: 0, modified: Self.modified)
        #expect(emptyRange.status == .rangeNotSatisfiable && emptyRange.headers[.contentRange] == "bytes */0")
    }

    @Test func ifRangeServesThePartOnlyWhileTheValidatorStillMatches() {
        func answer(_ ifRange: String) -> VideoAnswer {
            VideoAnswer(request: [.range: "bytes=10-19", .ifRange: ifRange], size: 100, modified: Self.modified)
        }
        #expect(answer(Self.tag).status == .partialContent)
        #expect(answer(Self.tag).bytes == 10...19)
        #expect(answer(HTTPDate.format(Self.modified)).status == .partialContent)
        // A changed file, a weak tag (If-Range needs a strong match) or another date: the whole file.
        for stale in ["\"other\"", "W/\(Self.tag)", HTTPDate.format(Self.modified - 1), "garbage"] {
            let whole = answer(stale)
            #expect(whole.status == .ok, "\(stale)")
            #expect(whole.bytes == 0...99 && whole.headers[.contentRange] == nil, "\(stale)")
        }
        // If-Range without Range changes nothing.
        #expect(VideoAnswer(request: [.ifRange: Self.tag], size: 100, modified: Self.modified).status == .ok)
    }

    @Test func conditionalGetsAnswer304WithoutABody() {
        func answer(_ headers: HTTPFields) -> VideoAnswer { VideoAnswer(request: headers, size: 100, modified: Self.modified) }
        for headers: HTTPFields in [
            [.ifNoneMatch: Self.tag], [.ifNoneMatch: "W/\(Self.tag)"], [.ifNoneMatch: "\"a\", \(Self.tag)"], [.ifNoneMatch: "*"],
            [.ifModifiedSince: HTTPDate.format(Self.modified)], [.ifModifiedSince: HTTPDate.format(Self.modified + 60)],
            [.ifNoneMatch: Self.tag, .range: "bytes=0-1"],
        ] {
            let notModified = answer(headers)
            #expect(notModified.status == .notModified, "\(headers)")
            #expect(notModified.bytes == nil && notModified.headers[.eTag] == Self.tag, "\(headers)")
        }
        for headers: HTTPFields in [
            [.ifNoneMatch: "\"other\""], [.ifModifiedSince: HTTPDate.format(Self.modified - 1)], [.ifModifiedSince: "not a date"],
            // If-None-Match decides alone when both are sent.
            [.ifNoneMatch: "\"other\"", .ifModifiedSince: HTTPDate.format(Self.modified)],
        ] {
            #expect(answer(headers).status == .ok, "\(headers)")
        }
    }

    @Test func twoRangeFieldsAreIgnored() {
        var headers = HTTPFields()
        headers.append(.init(name: .range, value: "bytes=0-1"))
        headers.append(.init(name: .range, value: "bytes=2-3"))
        let answer = VideoAnswer(request: headers, size: 100, modified: Self.modified)
        #expect(answer.status == .ok && answer.bytes == 0...99)
    }

    // MARK: - Over HTTP

    static let videoName = "0123456789abcdef0123456789abcdef.mp4"

    /// Deterministic, non-repeating bytes, larger than the 128 KiB read chunk so ranges cross chunks.
    static let content: [UInt8] = {
        var state: UInt32 = 0x9E37_79B9
        return (0..<300_001).map { _ in
            state ^= state << 13
            state ^= state >> 17
            state ^= state << 5
            return UInt8(truncatingIfNeeded: state)
        }
    }()

    /// A live server whose videos directory holds `content` as `videoName`, plus `extra` by name.
    func withVideoServer(
        extra: [String: [UInt8]] = [:],
        _ body: @Sendable (_ client: any TestClientProtocol, _ port: Int) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let videos = directory.url.appending(path: "videos")
        try FileManager.default.createDirectory(at: videos, withIntermediateDirectories: true)
        try Data(Self.content).write(to: videos.appending(path: Self.videoName))
        for (name, bytes) in extra { try Data(bytes).write(to: videos.appending(path: name)) }
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.live) { client in
            try await body(client, try #require(client.port))
        }
    }

    @Test func unsatisfiableRangesAre416WithTheSizeAndNoBody() async throws {
        let size = Self.content.count
        let emptyName = "ffffffffffffffffffffffffffffffff.mp4"
        try await withVideoServer(extra: [emptyName: []]) { client, _ in
            for range in ["bytes=999999999-", "bytes=\(size)-", "bytes=\(size)-\(size + 10)", "bytes=-0"] {
                let response = try await client.execute(uri: "/videos/\(Self.videoName)", method: .get, headers: [.range: range])
                #expect(response.status == .rangeNotSatisfiable, "\(range)")
                #expect(response.headers[.contentRange] == "bytes */\(size)", "\(range)")
                #expect(response.headers[.contentLength] == "0", "\(range)")
                #expect(response.headers[.acceptRanges] == "bytes", "\(range)")
                #expect(response.body.readableBytes == 0, "\(range)")
            }
            let empty = try await client.execute(uri: "/videos/\(emptyName)", method: .get, headers: [.range: "bytes=0-"])
            #expect(empty.status == .rangeNotSatisfiable)
            #expect(empty.headers[.contentRange] == "bytes */0")
            #expect(empty.body.readableBytes == 0)
            let emptyWhole = try await client.execute(uri: "/videos/\(emptyName)", method: .get)
            #expect(emptyWhole.status == .ok)
            #expect(emptyWhole.headers[.contentLength] == "0")
        }
    }

    @Test func satisfiableRangesReturnExactlyThoseBytes() async throws {
        let size = Self.content.count
        let cases: [(header: String, first: Int, last: Int)] = [
            ("bytes=0-0", 0, 0),
            ("bytes=5-7", 5, 7),
            ("bytes=131000-262200", 131_000, 262_200),
            ("bytes=-7", size - 7, size - 1),
            ("bytes=-\(size + 5)", 0, size - 1),
            ("bytes=\(size - 9)-", size - 9, size - 1),
            ("bytes=100000-", 100_000, size - 1),
            ("bytes=\(size - 3)-\(size + 1000)", size - 3, size - 1),
            ("bytes=\(size - 1)-\(size - 1)", size - 1, size - 1),
        ]
        try await withVideoServer { client, _ in
            for (header, first, last) in cases {
                let response = try await client.execute(uri: "/videos/\(Self.videoName)", method: .get, headers: [.range: header])
                #expect(response.status == .partialContent, "\(header)")
                #expect(response.headers[.contentRange] == "bytes \(first)-\(last)/\(size)", "\(header)")
                #expect(response.headers[.contentLength] == String(last - first + 1), "\(header)")
                #expect(response.headers[.contentType] == "video/mp4", "\(header)")
                #expect(response.headers[.acceptRanges] == "bytes", "\(header)")
                #expect(byteMismatch(response.body.readableBytesView, Self.content[first...last]) == nil, "\(header)")
            }
        }
    }

    @Test func malformedOrMultipleRangesGetTheWholeFile() async throws {
        try await withVideoServer { client, _ in
            for header in ["bytes=5-3", "bytes=0-1,4-5", "items=0-1", "bytes=abc", "bytes="] {
                let response = try await client.execute(uri: "/videos/\(Self.videoName)", method: .get, headers: [.range: header])
                #expect(response.status == .ok, "\(header)")
                #expect(response.headers[.contentRange] == nil, "\(header)")
                #expect(response.headers[.contentLength] == String(Self.content.count), "\(header)")
                #expect(byteMismatch(response.body.readableBytesView, Self.content) == nil, "\(header)")
            }
        }
    }

    @Test func validatorsDriveIfRangeAndNotModified() async throws {
        try await withVideoServer { client, _ in
            let path = "/videos/\(Self.videoName)"
            let whole = try await client.execute(uri: path, method: .get)
            let tag = try #require(whole.headers[.eTag])
            let lastModified = try #require(whole.headers[.lastModified])
            #expect(!tag.hasPrefix("W/"))

            for validator in [tag, lastModified] {
                let part = try await client.execute(uri: path, method: .get, headers: [.range: "bytes=1-2", .ifRange: validator])
                #expect(part.status == .partialContent, "\(validator)")
                #expect(byteMismatch(part.body.readableBytesView, Self.content[1...2]) == nil)
            }
            let stale = try await client.execute(uri: path, method: .get, headers: [.range: "bytes=1-2", .ifRange: "\"stale\""])
            #expect(stale.status == .ok)
            #expect(stale.body.readableBytes == Self.content.count)

            let cached = try await client.execute(uri: path, method: .get, headers: [.ifNoneMatch: tag])
            #expect(cached.status == .notModified)
            #expect(cached.body.readableBytes == 0)
            #expect(cached.headers[.eTag] == tag)
        }
    }

    /// HEAD is compared with GET on the wire, so a body sent after a HEAD would show up as stray bytes.
    @Test func headMirrorsGetForEveryKindOfRange() async throws {
        let size = Self.content.count
        let ranges: [String?] = [
            nil, "bytes=5-7", "bytes=-7", "bytes=\(size - 9)-", "bytes=0-\(size + 9)", "bytes=999999999-", "bytes=\(size)-", "bytes=-0", "bytes=5-3",
            "bytes=0-1,4-5",
        ]
        try await withVideoServer { _, port in
            var requests: [WireRequest] = []
            for range in ranges {
                let headers = range.map { ["Range": $0] } ?? [:]
                requests.append(WireRequest(method: "GET", path: "/videos/\(Self.videoName)", headers: headers))
                requests.append(WireRequest(method: "HEAD", path: "/videos/\(Self.videoName)", headers: headers))
            }
            let responses = try await WireClient.exchange(port: port, requests)
            try #require(responses.count == requests.count)
            for (index, range) in ranges.enumerated() {
                let get = responses[2 * index]
                let head = responses[2 * index + 1]
                #expect(head.status == get.status, "\(range ?? "no range")")
                #expect(head.comparableHeaders == get.comparableHeaders, "\(range ?? "no range")")
                #expect(head.body.isEmpty)
            }
            #expect(responses.map(\.status) == [200, 200, 206, 206, 206, 206, 206, 206, 206, 206, 416, 416, 416, 416, 416, 416, 200, 200, 200, 200])
        }
    }

    @Test func anUnsatisfiableRangeLeavesTheKeptAliveConnectionClean() async throws {
        let size = Self.content.count
        try await withVideoServer { _, port in
            let path = "/videos/\(Self.videoName)"
            let responses = try await WireClient.exchange(
                port: port,
                [
                    WireRequest(method: "GET", path: path, headers: ["Range": "bytes=\(size)-"]),
                    WireRequest(method: "GET", path: path, headers: ["Range": "bytes=999999999-"]),
                    WireRequest(method: "GET", path: path, headers: ["Range": "bytes=-0"]),
                    WireRequest(method: "GET", path: path, headers: ["Range": "bytes=2-5"]),
                    WireRequest(method: "GET", path: path, headers: [:]),
                ])
            #expect(responses.map(\.status) == [416, 416, 416, 206, 200])
            for response in responses.prefix(3) {
                #expect(response.header("content-range") == "bytes */\(size)")
                #expect(response.header("content-length") == "0")
                #expect(response.body.isEmpty)
                #expect(response.header("connection") != "close")
            }
            #expect(byteMismatch(responses[3].body, Self.content[2...5]) == nil)
            #expect(byteMismatch(responses[4].body, Self.content) == nil)
        }
    }

    @Test func missingAndForeignNamesAre404WithTheJSONError() async throws {
        // On disk, so only the name check keeps them from being served.
        let decoys = [Self.videoName.uppercased(): Self.content, "\(Self.videoName)x": Self.content]
        try await withVideoServer(extra: decoys) { client, _ in
            let missing = "/videos/\(String(repeating: "e", count: 32)).mp4"
            for (path, method) in [
                (missing, HTTPRequest.Method.get), (missing, .head), ("/videos/\(Self.videoName.uppercased())", .get), ("/videos/\(Self.videoName)x", .get),
            ] {
                let response = try await client.execute(uri: path, method: method, headers: [.range: "bytes=0-1"])
                #expect(response.status == .notFound, "\(method) \(path)")
                if method == .get {
                    let detail = try response.jsonObject()["detail"] as? [String: Any]
                    #expect(detail?["status"] as? String == "Failed", "\(path)")
                }
            }
        }
    }
}

/// nil when the bytes are equal, else where they part. Comparing the arrays inside `#expect` would make
/// a failure diff hundreds of kilobytes element by element, which takes longer than the run.
func byteMismatch(_ actual: some Collection<UInt8>, _ expected: some Collection<UInt8>) -> String? {
    let actual = Array(actual), expected = Array(expected)
    guard actual != expected else { return nil }
    let offset = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(actual.count, expected.count)
    return "\(actual.count) bytes where \(expected.count) were expected; they first differ at offset \(offset)"
}

// MARK: - A raw HTTP/1.1 client on one connection

struct WireRequest: Sendable {
    var method: String
    var path: String
    var headers: [String: String]
}

struct WireResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? { headers.first { $0.name == name.lowercased() }?.value }

    /// What GET and HEAD of the same resource must share; Date may tick between the two.
    var comparableHeaders: [String] { headers.filter { $0.name != "date" }.map { "\($0.name): \($0.value)" }.sorted() }
}

struct WireError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Sends requests one after another on a single TCP connection, each once the previous answer is
/// complete, and reads to the end: any byte a response sends beyond its framing breaks the parse of
/// the next one, which no pooling HTTP client would show.
enum WireClient {
    static func exchange(port: Int, _ requests: [WireRequest]) async throws -> [WireResponse] {
        try await withThrowingTaskGroup(of: [WireResponse].self) { group in
            group.addTask { try await run(port: port, requests) }
            // Only so a hung connection fails the test instead of stalling the run.
            group.addTask {
                try await Task.sleep(for: .seconds(120))
                throw WireError("no complete answer on the connection")
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    private static func run(port: Int, _ asked: [WireRequest]) async throws -> [WireResponse] {
        // A final repeat of the first request lets the server close, so reading to the end collects
        // everything; its own answer is dropped, and any stray byte before it breaks its parse.
        let requests = asked + asked.prefix(1)
        let heads = requests.map { $0.method == "HEAD" }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var received: [UInt8] = []
            for (index, request) in requests.enumerated() {
                let isLast = index == requests.count - 1
                var text = "\(request.method) \(request.path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                for (name, value) in request.headers { text += "\(name): \(value)\r\n" }
                if isLast { text += "Connection: close\r\n" }
                text += "\r\n"
                try await outbound.write(ByteBuffer(string: text))
                if !isLast {
                    while try parse(received, heads: heads).responses.count <= index {
                        guard let chunk = try await iterator.next() else {
                            throw WireError("connection closed after \(index) of \(requests.count) answers")
                        }
                        received.append(contentsOf: chunk.readableBytesView)
                    }
                }
            }
            while let chunk = try await iterator.next() { received.append(contentsOf: chunk.readableBytesView) }
            let (responses, rest) = try parse(received, heads: heads)
            guard rest.isEmpty else { throw WireError("\(rest.count) stray bytes after \(responses.count) answers") }
            guard responses.count == requests.count else {
                throw WireError("\(responses.count) answers to \(requests.count) requests")
            }
            return Array(responses.dropLast())
        }
    }

    /// The complete responses at the start of `bytes`, and what follows them; throws on anything that is
    /// not a well-framed response. `heads[i]`: the i-th request was a HEAD, whose answer has no body.
    static func parse(_ bytes: [UInt8], heads: [Bool]) throws -> (responses: [WireResponse], rest: ArraySlice<UInt8>) {
        var responses: [WireResponse] = []
        var position = bytes.startIndex
        let terminator: [UInt8] = Array("\r\n\r\n".utf8)
        while position < bytes.endIndex {
            guard let headEnd = bytes[position...].firstRange(of: terminator) else { break }
            let head = String(decoding: bytes[position..<headEnd.lowerBound], as: UTF8.self)
            var lines = head.components(separatedBy: "\r\n")
            let statusLine = lines.removeFirst()
            let parts = statusLine.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, parts[0] == "HTTP/1.1", let status = Int(parts[1]), (100...599).contains(status) else {
                throw WireError("not a status line: \(statusLine.debugDescription)")
            }
            var headers: [(name: String, value: String)] = []
            for line in lines {
                guard let colon = line.firstIndex(of: ":") else { throw WireError("bad header line \(line.debugDescription)") }
                headers.append((line[..<colon].lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            let index = responses.count
            guard index < heads.count else { throw WireError("an answer nobody asked for: \(statusLine)") }
            var length = 0
            if !heads[index] && status != 304 && status != 204 {
                guard !headers.contains(where: { $0.name == "transfer-encoding" }) else { throw WireError("unexpected chunked answer") }
                guard let value = headers.first(where: { $0.name == "content-length" })?.value, let parsed = Int(value), parsed >= 0 else {
                    throw WireError("answer \(index) has no valid Content-Length: \(head)")
                }
                length = parsed
            }
            let bodyStart = headEnd.upperBound
            guard bytes.endIndex - bodyStart >= length else { break }
            responses.append(WireResponse(status: status, headers: headers, body: Array(bytes[bodyStart..<(bodyStart + length)])))
            position = bodyStart + length
        }
        return (responses, bytes[position...])
    }
}
