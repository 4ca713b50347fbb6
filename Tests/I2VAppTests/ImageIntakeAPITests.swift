import Configuration
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import I2VTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The image intake through the real HTTP API: each hostile or broken image
/// source answers `POST /video/submit` with 400 and its exact reason, is counted in `/metrics` by cause and
/// leaves nothing behind; each good image is accepted (202) and the prepared input PNG the app hands to the
/// worker has the planned size, the upright orientation and the right colours.
///
/// Image sources are loopback servers: `withImageServer` (Hummingbird) for ordinary responses and
/// `RawServer` (bare TCP) for responses no HTTP server would send. The fixtures under `Fixtures/`
/// were made with ffmpeg (the pictures are solid halves, so every pixel check has a wide margin):
///
///     ffmpeg -filter_complex "color=c=red:s=160x180[a];color=c=blue:s=160x180[b];[a][b]hstack=inputs=2,format=yuvj420p" \
///         -frames:v 1 -q:v 2 intake-red-blue-320x180.jpg
///     ffmpeg -filter_complex "color=c=red:s=180x160[a];color=c=blue:s=180x160[b];[a][b]vstack=inputs=2" \
///         -frames:v 1 -c:v libwebp -lossless 1 intake-red-over-blue-180x320.webp
///     ffmpeg -filter_complex "color=c=red:s=120x180:r=1:d=1[a];color=c=blue:s=120x180:r=1:d=1[b];[a][b]hstack=inputs=2,
///         split[s0][s1];[s0]palettegen=max_colors=4:reserve_transparent=0[p];[s1][p]paletteuse=dither=none" \
///         -frames:v 1 intake-red-blue-240x180.gif
///
/// PNGs (RGB, RGBA, grey, palette, and the 60000×60000 header) are written by `PNG` of the test-support target; the
/// EXIF orientation 6 JPEG is the JPEG fixture with an APP1 segment spliced in.
///
/// The test model has a native area of 15360 and a size multiple of 16, so `auto` plans 320×180 → 160×80.
@Suite struct ImageIntakeAPITests {
    // MARK: - images that cannot be used

    @Test func undecodableBodiesAre400() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                let cases: [(path: String, reason: String)] = [
                    ("/corrupt.png", "not a decodable image"),
                    ("/signature-only.png", "not a decodable image (corrupt png header)"),
                    ("/truncated.png", "not a decodable image (corrupt or truncated png data)"),
                    ("/page.html", "not a decodable image"),
                    ("/page-as-jpeg.jpg", "not a decodable image"),
                    ("/empty.png", "not a decodable image (the body is empty)"),
                ]
                for (path, reason) in cases {
                    try await IntakeAPI.expectRefused(client, "\(base)\(path)", reason)
                }
                #expect(try await IntakeAPI.imageFailures(client) == ["notAnImage": cases.count])
                IntakeAPI.expectNoInputs(directory.url)
            }
        }
    }

    @Test func errorStatusesAre400() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                try await IntakeAPI.expectRefused(client, "\(base)/missing.png", "image download failed: HTTP status 404")
                try await IntakeAPI.expectRefused(client, "\(base)/broken.png", "image download failed: HTTP status 500")
                #expect(try await IntakeAPI.imageFailures(client) == ["httpStatus": 2])
                IntakeAPI.expectNoInputs(directory.url)
            }
        }
    }

    @Test func aServerThatHangsIsCutOffAtTheTimeout() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.imageTimeoutSeconds": 1])
        // Never answers at all.
        let silent = try await RawServer.start(response: nil)
        defer { silent.close() }
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                // A server that never answers, and one whose body drips in for a minute (each read is quick;
                // only the deadline on the whole download stops it).
                for url in ["http://127.0.0.1:\(silent.port)/hang.png", "\(base)/drip.png"] {
                    let started = ContinuousClock.now
                    let response = try await IntakeAPI.submit(client, url)
                    let elapsed = ContinuousClock.now - started
                    IntakeAPI.expectRefused(response, "image download failed: timed out after 1 s", url)
                    #expect(elapsed >= .milliseconds(900), "\(url): gave up early, after \(elapsed)")
                }
                // The drip was still going when the download gave up.
                #expect(IntakeAPI.dripsFinished.load(ordering: .relaxed) == 0)
                #expect(try await IntakeAPI.imageFailures(client) == ["timedOut": 2])
                IntakeAPI.expectNoInputs(directory.url)
            }
        }
    }

    /// Every failure of the download itself, whatever its cause, is reported the same way: a reason that
    /// starts with "image download failed: " and then names the cause.
    @Test func everyDownloadFailureStartsItsReasonTheSameWay() async throws {
        let blocking = try TemporaryDirectory(), allowing = try TemporaryDirectory()
        let strict = try await makeTestApp(dataDir: blocking.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": false])
        let open = try await makeTestApp(
            dataDir: allowing.url,
            worker: FakeWorker(ready: false),
            ["i2v.imageMaxBytes": 100_000, "i2v.imageTimeoutSeconds": 1]
        )
        let closed = try ReservedPort()
        let closedPort = closed.port
        let lyingHead = try await RawServer.start(
            response: IntakeAPI.rawResponse(headers: [("Content-Type", "image/png"), ("Content-Length", "100000000")], body: []),
            closeAfterResponse: false
        )
        defer { lyingHead.close() }
        try await withImageServer(IntakeAPI.routes) { base in
            let strictCauses = try await strict.test(.router) { client -> [String: String] in
                [
                    "DNS": try await IntakeAPI.submit(client, "http://nonexistent.invalid/x.png").failureReason ?? "no reason",
                    "blocked address": try await IntakeAPI.submit(client, "http://127.0.0.1:\(IntakeAPI.port(of: base))/image.png")
                        .failureReason ?? "no reason",
                ]
            }
            let openCauses = try await open.test(.router) { client -> [String: String] in
                var causes: [String: String] = [:]
                for (cause, url) in [
                    ("refused", "http://127.0.0.1:\(closedPort)/x.png"),
                    ("timeout", "\(base)/drip.png"),
                    ("HTTP status", "\(base)/missing.png"),
                    ("size cap with Content-Length", "http://127.0.0.1:\(lyingHead.port)/big.png"),
                    ("size cap without Content-Length", "\(base)/big-chunked.png"),
                    ("redirects", "\(base)/redirect/4"),
                    ("redirect to a blocked address", "\(base)/to?url=http://169.254.169.254/"),
                    ("redirect to another scheme", "\(base)/to?url=file:///etc/passwd"),
                ] {
                    causes[cause] = try await IntakeAPI.submit(client, url).failureReason ?? "no reason"
                }
                return causes
            }
            closed.release()
            let causes = strictCauses.merging(openCauses) { first, _ in first }
            #expect(causes.count == 10)
            for (cause, reason) in causes.sorted(by: { $0.key < $1.key }) {
                #expect(reason.hasPrefix("image download failed: "), "\(cause): \(reason)")
                #expect(reason.count > "image download failed: ".count + 5, "\(cause) names no cause: \(reason)")
            }
        }
    }

    @Test func redirectsAreFollowedAtMostThreeTimes() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                // /redirect/N answers N redirects, then the image.
                _ = try await IntakeAPI.expectAccepted(client, "\(base)/redirect/3", "3 redirects")
                try await IntakeAPI.expectRefused(client, "\(base)/redirect/4", "image download failed: too many redirects (more than 3)")
                try await IntakeAPI.expectRefused(client, "\(base)/redirect/5", "image download failed: too many redirects (more than 3)")
                #expect(try await IntakeAPI.imageFailures(client) == ["tooManyRedirects": 2])
            }
        }
    }

    @Test func redirectTargetsAreCheckedAgain() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            let port = IntakeAPI.port(of: base)
            try await app.test(.router) { client in
                try await IntakeAPI.expectRefused(
                    client,
                    "\(base)/to?url=file:///etc/passwd",
                    "image download failed: redirect to an unusable URL (image URL must use http or https, not file)"
                )
                try await IntakeAPI.expectRefused(
                    client,
                    "\(base)/to?url=http://user:secret@127.0.0.1:\(port)/image.png",
                    "image URL must not contain a user name or password"
                )
                #expect(try await IntakeAPI.imageFailures(client) == ["invalidURL": 1, "credentialsInURL": 1])
            }
        }
    }

    /// Through the API a redirect can only start at a host the app may reach, and the only hosts a test can
    /// serve from are loopback, so the first hop needs `allowPrivateImageHosts`; the metadata range must
    /// stay blocked even then (the setting opens loopback and private ranges, not link-local).
    @Test
    func aRedirectToTheMetadataAddressIsRefusedEvenWhenPrivateHostsAreAllowed() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                // The second target is http://[::ffff:169.254.169.254]/ once the query is decoded.
                for (target, blocked) in [
                    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
                    ("http://%5B::ffff:169.254.169.254%5D/latest/meta-data/", "::ffff:169.254.169.254"),
                ] {
                    try await IntakeAPI.expectRefused(
                        client,
                        "\(base)/to?url=\(target)",
                        "image download failed: image host resolves to a blocked address (\(blocked))"
                    )
                }
                #expect(try await IntakeAPI.imageFailures(client) == ["blockedAddress": 2])
            }
        }
    }

    @Test func bodiesOverTheByteCapAre400HoweverTheyAreSent() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.imageMaxBytes": 100_000])
        let big = IntakeAPI.bigPNG
        #expect(big.count > 100_000)
        // Announces 100 MB and then sends nothing: refused from the head, without waiting for a body.
        let lyingHead = try await RawServer.start(
            response: IntakeAPI.rawResponse(headers: [("Content-Type", "image/png"), ("Content-Length", "100000000")], body: []),
            closeAfterResponse: false
        )
        defer { lyingHead.close() }
        // No length at all: the body ends when the connection closes.
        let closeDelimited = try await RawServer.start(
            response: IntakeAPI.rawResponse(headers: [("Content-Type", "image/png"), ("Connection", "close")], body: big)
        )
        defer { closeDelimited.close() }
        // A small image whose Content-Length is honest, followed by 300 kB the head does not announce: only
        // the announced bytes are read, so it is accepted.
        let small = IntakeAPI.palettePNG.bytes
        let trailingJunk = try await RawServer.start(
            response: IntakeAPI.rawResponse(
                headers: [("Content-Type", "image/png"), ("Content-Length", "\(small.count)")],
                body: small + [UInt8](repeating: 0xff, count: 300_000)
            )
        )
        defer { trailingJunk.close() }
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                let reason = "image download failed: image is larger than 100000 bytes"
                for url in [
                    "\(base)/big.png",  // honest Content-Length over the cap
                    "\(base)/big-chunked.png",  // chunked, no Content-Length
                    "http://127.0.0.1:\(lyingHead.port)/big.png",
                    "http://127.0.0.1:\(closeDelimited.port)/big.png",
                ] {
                    try await IntakeAPI.expectRefused(client, url, reason)
                }
                #expect(try await IntakeAPI.imageFailures(client) == ["tooLarge": 4])
                IntakeAPI.expectNoInputs(directory.url)
                let id = try await IntakeAPI.expectAccepted(
                    client,
                    "http://127.0.0.1:\(trailingJunk.port)/small.png",
                    "trailing junk"
                )
                let png = try IntakeAPI.PreparedPNG(directory.url, id)
                #expect(png.width == 128 && png.height == 96)
            }
        }
    }

    @Test func aPixelBombIsRefusedFromItsHeaderWithoutDecoding() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                // The file holds one pixel's data: only its header can tell of 3.6 gigapixels (a decode
                // would have failed on the missing data instead).
                let response = try await IntakeAPI.submit(client, "\(base)/bomb.png")
                IntakeAPI.expectRefused(response, "image has 3600000000 pixels, more than the 40000000 allowed")
                #expect(try await IntakeAPI.imageFailures(client) == ["tooManyPixels": 1])
            }
        }
    }

    @Test func thePixelCapFollowsTheConfiguration() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.imageMaxPixels": 50_000])
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                // 320×180 = 57600 pixels; 200×200 = 40000.
                try await IntakeAPI.expectRefused(client, "\(base)/red-blue.jpg", "image has 57600 pixels, more than the 50000 allowed")
                _ = try await IntakeAPI.expectAccepted(client, "\(base)/rgb.png", "200×200")
                #expect(try await IntakeAPI.imageFailures(client) == ["tooManyPixels": 1])
            }
        }
    }

    // MARK: - addresses

    static let loopbackSpellings = ["2130706433", "0x7f.1", "017700000001", "127.1", "127.0.0.1"]

    @Test func privateAddressesInAnySpellingAreBlockedByDefault() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": false])
        try await withImageServer(IntakeAPI.routes) { base in
            let port = IntakeAPI.port(of: base)
            try await app.test(.router) { client in
                // Each URL names the running image server's port: were the check missing, it would be served.
                var cases: [(url: String, blocked: String)] = Self.loopbackSpellings.map { ("http://\($0):\(port)/image.png", "127.0.0.1") }
                cases += [
                    ("http://[::ffff:127.0.0.1]:\(port)/image.png", "::ffff:127.0.0.1"),
                    ("http://[::1]:\(port)/image.png", "::1"),
                    ("http://localhost:\(port)/image.png", "localhost"),
                    ("http://LocalHost.:\(port)/image.png", "LocalHost."),
                    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
                    ("http://0/", "0.0.0.0"),
                ]
                // The spellings exactly as a user may write them (default port).
                cases += ["2130706433", "0x7f.1", "017700000001", "127.1"].map { ("http://\($0)/", "127.0.0.1") }
                cases.append(("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"))
                for (url, blocked) in cases {
                    try await IntakeAPI.expectRefused(client, url, "image download failed: image host resolves to a blocked address (\(blocked))")
                }
                #expect(try await IntakeAPI.imageFailures(client) == ["blockedAddress": cases.count])
                IntakeAPI.expectNoInputs(directory.url)
            }
        }
    }

    @Test func theLoopbackServerIsServedInAnySpellingWhenPrivateHostsAreAllowed() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": true])
        try await withImageServer(IntakeAPI.routes) { base in
            let port = IntakeAPI.port(of: base)
            try await app.test(.router) { client in
                var urls = (Self.loopbackSpellings + ["[::ffff:127.0.0.1]", "localhost"]).map { "http://\($0):\(port)/image.png" }
                // ... and as a redirect target.
                urls.append("\(base)/to?url=http://0x7f.1:\(port)/image.png")
                for url in urls {
                    let id = try await IntakeAPI.expectAccepted(client, url)
                    let png = try IntakeAPI.PreparedPNG(directory.url, id)
                    #expect(png.width == 160 && png.height == 80, "\(url)")
                }
                #expect(try await IntakeAPI.imageFailures(client) == [:])
            }
        }
    }

    @Test func credentialsInTheURLAre400() async throws {
        let directory = try TemporaryDirectory()
        // Private hosts allowed: without the check these would be served.
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": true])
        try await withImageServer(IntakeAPI.routes) { base in
            let port = IntakeAPI.port(of: base)
            try await app.test(.router) { client in
                let urls = ["user:secret@", "user@", ":secret@"].map { "http://\($0)127.0.0.1:\(port)/image.png" }
                for url in urls {
                    try await IntakeAPI.expectRefused(client, url, "image URL must not contain a user name or password")
                }
                #expect(try await IntakeAPI.imageFailures(client) == ["credentialsInURL": urls.count])
            }
        }
    }

    @Test func dnsFailureAndRefusedConnectionsAre400() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": false])
        // A port held without a listener: nothing listens there, and no other test's server can take it.
        let closed = try ReservedPort()
        let closedPort = closed.port
        let allowing = try TemporaryDirectory()
        let allowingApp = try await makeTestApp(dataDir: allowing.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": true])
        try await app.test(.router) { client in
            // `.invalid` never resolves (RFC 6761): the local resolver answers at once, nothing is connected.
            let response = try await IntakeAPI.submit(client, "http://nonexistent.invalid/x.png")
            #expect(response.status == .badRequest)
            let reason = response.failureReason ?? ""
            #expect(reason.hasPrefix("image download failed: DNS lookup failed for nonexistent.invalid"), "\(reason)")
            #expect(try await IntakeAPI.imageFailures(client) == ["dnsFailure": 1])
        }
        try await allowingApp.test(.router) { client in
            try await IntakeAPI.expectRefused(
                client,
                "http://127.0.0.1:\(closedPort)/x.png",
                "image download failed: connection refused"
            )
            #expect(try await IntakeAPI.imageFailures(client) == ["connectionRefused": 1])
        }
        closed.release()
    }

    // MARK: - resolution

    @Test func aspectRatiosBeyondOneToFourAreRefusedForAutoButNotForFixedSizes() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                try await IntakeAPI.expectRefused(
                    client,
                    "\(base)/wide-401x100.png",
                    "aspect ratio 4.01:1 is beyond 4:1 (the image is 401×100)"
                )
                try await IntakeAPI.expectRefused(
                    client,
                    "\(base)/tall-100x500.png",
                    "aspect ratio 1:5 is beyond 1:4 (the image is 100×500)"
                )
                #expect(try await IntakeAPI.imageFailures(client) == ["aspectRatio": 2])
                IntakeAPI.expectNoInputs(directory.url)

                // Exactly 4:1 is still fine for auto.
                let limit = try await IntakeAPI.expectAccepted(client, "\(base)/wide-400x100.png", "4:1")
                #expect(try IntakeAPI.PreparedPNG(directory.url, limit).size == [240, 48])
                // The very same pictures at a fixed size: scaled to cover and centre-cropped.
                let wide = try await IntakeAPI.expectAccepted(client, "\(base)/wide-401x100.png", size: "832x480")
                #expect(try IntakeAPI.PreparedPNG(directory.url, wide).size == [832, 480])
                let tall = try await IntakeAPI.expectAccepted(client, "\(base)/tall-100x500.png", size: "480x832")
                #expect(try IntakeAPI.PreparedPNG(directory.url, tall).size == [480, 832])
                #expect(try await IntakeAPI.imageFailures(client) == ["aspectRatio": 2])
            }
        }
    }

    // MARK: - good images

    @Test func goodImagesAreAcceptedAndPreparedAtThePlannedSize() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                for picture in IntakeAPI.goodPictures {
                    let id = try await IntakeAPI.expectAccepted(client, "\(base)/\(picture.path)", picture.name)
                    // Still queued (the worker is not ready), so the prepared input is where the worker will read it.
                    let png = try IntakeAPI.PreparedPNG(directory.url, id)
                    #expect(png.size == picture.planned, "\(picture.name): prepared \(png.size)")
                    // 8-bit RGB, no alpha.
                    #expect(png.bitDepth == 8 && png.colourType == 2, "\(picture.name): bit depth \(png.bitDepth), colour type \(png.colourType)")
                    let status = try await client.status(id)
                    #expect(status["status"] as? String == "InQueue", "\(picture.name)")
                }
                #expect(try await IntakeAPI.imageFailures(client) == [:])
            }
        }
    }

    @Test(.enabled(if: IntakeAPI.FFmpeg.usable, "needs ffmpeg to decode the prepared PNG (scripts/install-system-deps.sh)"))
    func goodImagesKeepTheirColoursAndAreTurnedUpright() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer(IntakeAPI.routes) { base in
            try await app.test(.router) { client in
                for picture in IntakeAPI.goodPictures {
                    let id = try await IntakeAPI.expectAccepted(client, "\(base)/\(picture.path)", picture.name)
                    let file = directory.url.appending(path: "inputs/\(id).png")
                    let png = try IntakeAPI.PreparedPNG(directory.url, id)
                    let pixels = try await IntakeAPI.FFmpeg.rgb(file, width: png.width, height: png.height)
                    let (w, h) = (png.width, png.height)
                    let samples: [(x: Int, y: Int, colour: [UInt8])]
                    switch picture.layout {
                    case .leftRight(let left, let right):
                        samples = [h / 4, h / 2, h - 1 - h / 4].flatMap { y in [(w / 8, y, left), (w - 1 - w / 8, y, right)] }
                    case .topBottom(let top, let bottom):
                        samples = [w / 4, w / 2, w - 1 - w / 4].flatMap { x in [(x, h / 8, top), (x, h - 1 - h / 8, bottom)] }
                    }
                    for (x, y, colour) in samples {
                        let start = (y * w + x) * 3
                        let found = Array(pixels[start..<start + 3])
                        let near = zip(found, colour).allSatisfy { abs(Int($0) - Int($1)) <= 40 }
                        #expect(near, "\(picture.name): pixel (\(x), \(y)) of \(w)×\(h) is \(found), expected about \(colour)")
                    }
                }
            }
        }
    }
}

// MARK: - support

/// Helpers of `ImageIntakeAPITests`, kept in their own namespace.
enum IntakeAPI {
    static let red: [UInt8] = [255, 0, 0]
    /// How many `/drip.png` bodies were sent to their end (a download deadline should cut each one off).
    static let dripsFinished = Atomic<Int>(0)
    static let blue: [UInt8] = [0, 0, 255]
    static let white: [UInt8] = [255, 255, 255]

    static func fixture(_ name: String) -> [UInt8] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appending(path: "Fixtures/\(name)")
        guard let data = try? Data(contentsOf: url) else {
            Issue.record("missing fixture \(name)")
            return []
        }
        return Array(data)
    }

    static let jpeg = fixture("intake-red-blue-320x180.jpg")
    static let webp = fixture("intake-red-over-blue-180x320.webp")
    static let gif = fixture("intake-red-blue-240x180.gif")

    /// Left half red, right half blue.
    static func redBlue(width: Int, height: Int) -> PNG {
        PNG.rgb(width: width, height: height) { x, _ in x < width / 2 ? red : blue }
    }

    static let rgbPNG = redBlue(width: 200, height: 200)
    /// Left half fully transparent (black underneath), right half opaque blue: flattened onto white.
    static let rgbaPNG = PNG(width: 256, height: 128, colourType: 6) { x, _ in x < 128 ? [0, 0, 0, 0] : [0, 0, 255, 255] }
    /// Left half dark grey, right half light grey.
    static let greyPNG = PNG(width: 300, height: 100, colourType: 0) { x, _ in x < 150 ? [30] : [220] }
    /// Two palette entries, red and blue.
    static let palettePNG = PNG(width: 64, height: 48, colourType: 3, palette: [red, blue]) { x, _ in x < 32 ? [0] : [1] }
    /// Stored (uncompressed), so over 100 kB.
    static let bigPNG = redBlue(width: 320, height: 180).bytes
    /// A valid 1×1 PNG whose IHDR (CRC fixed) claims 60000×60000: 3.6 gigapixels.
    static let bombPNG = PNG.rgb(width: 1, height: 1) { _, _ in red }.claiming(width: 60000, height: 60000)

    /// The JPEG fixture with EXIF orientation 6 (the stored picture is turned 90° clockwise for display): the
    /// stored left (red) column becomes the top row, so it shows as 180×320, red over blue.
    static let jpegOrientation6: [UInt8] = {
        var tiff: [UInt8] = Array("MM".utf8) + [0x00, 0x2a, 0x00, 0x00, 0x00, 0x08]  // big-endian, IFD0 at 8
        tiff += [0x00, 0x01]  // one entry
        tiff += [0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00]  // Orientation, SHORT, 1, 6
        tiff += [0x00, 0x00, 0x00, 0x00]  // no next IFD
        let payload = Array("Exif".utf8) + [0, 0] + tiff
        let length = payload.count + 2
        let app1: [UInt8] = [0xff, 0xe1, UInt8(length >> 8), UInt8(length & 0xff)] + payload
        var bytes = jpeg
        guard bytes.count > 6, bytes[0] == 0xff, bytes[1] == 0xd8 else { return bytes }
        // After SOI, and after the JFIF APP0 segment when there is one.
        var at = 2
        if bytes[2] == 0xff, bytes[3] == 0xe0 {
            at = 4 + Int(bytes[4]) << 8 + Int(bytes[5])
        }
        bytes.insert(contentsOf: app1, at: at)
        return bytes
    }()

    enum Layout {
        case leftRight([UInt8], [UInt8])
        case topBottom([UInt8], [UInt8])
    }

    struct Picture: Sendable {
        var name: String
        var path: String
        var contentType: String
        var bytes: [UInt8]
        /// The frame `auto` plans on the test model (A = 15360, m = 16), width then height.
        var planned: [Int]
        var layout: Layout
    }

    /// h = floor(round(sqrt(A·H/W)) / m)·m and w = floor(round(sqrt(A·W/H)) / m)·m with A = 15360, m = 16.
    static let goodPictures: [Picture] = [
        // 320×180: sqrt(8640) = 92.95 → 93 → 80; sqrt(27306.7) = 165.2 → 165 → 160.
        Picture(name: "JPEG 320×180", path: "red-blue.jpg", contentType: "image/jpeg", bytes: jpeg, planned: [160, 80], layout: .leftRight(red, blue)),
        // 200×200: sqrt(15360) = 123.9 → 124 → 112.
        Picture(name: "PNG 200×200", path: "rgb.png", contentType: "image/png", bytes: rgbPNG.bytes, planned: [112, 112], layout: .leftRight(red, blue)),
        Picture(name: "WebP 180×320", path: "red-over-blue.webp", contentType: "image/webp", bytes: webp, planned: [80, 160], layout: .topBottom(red, blue)),
        // 240×180: sqrt(11520) = 107.3 → 107 → 96; sqrt(20480) = 143.1 → 143 → 128.
        Picture(name: "GIF 240×180", path: "red-blue.gif", contentType: "image/gif", bytes: gif, planned: [128, 96], layout: .leftRight(red, blue)),
        // 256×128: sqrt(7680) = 87.6 → 88 → 80; sqrt(30720) = 175.3 → 175 → 160.
        Picture(
            name: "RGBA PNG 256×128", path: "rgba.png", contentType: "image/png", bytes: rgbaPNG.bytes, planned: [160, 80], layout: .leftRight(white, blue)),
        // 300×100: sqrt(5120) = 71.6 → 72 → 64; sqrt(46080) = 214.7 → 215 → 208.
        Picture(
            name: "grey PNG 300×100", path: "grey.png", contentType: "image/png", bytes: greyPNG.bytes, planned: [208, 64],
            layout: .leftRight([30, 30, 30], [220, 220, 220])),
        // 64×48 has 240×180's aspect ratio: scaled up to 128×96. Served with a generic type: sniffed by its bytes.
        Picture(
            name: "palette PNG 64×48", path: "palette.png", contentType: "application/octet-stream", bytes: palettePNG.bytes, planned: [128, 96],
            layout: .leftRight(red, blue)),
        // Upright it is 180×320, so the frame is portrait.
        Picture(
            name: "JPEG with EXIF orientation 6", path: "orientation-6.jpg", contentType: "image/jpeg", bytes: jpegOrientation6, planned: [80, 160],
            layout: .topBottom(red, blue)),
    ]

    /// Routes of the loopback image server (it also serves `/image.png`, the 320×180 PNG fixture).
    @Sendable static func routes(_ router: Router<BasicRequestContext>) {
        func serve(_ path: RouterPath, _ bytes: [UInt8], _ contentType: String) {
            router.get(path) { _, _ in
                Response(status: .ok, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
        }
        for picture in goodPictures {
            serve(RouterPath(picture.path), picture.bytes, picture.contentType)
        }
        // Deterministic noise that starts with no image signature.
        var state: UInt32 = 0x1234_5678
        let noise = (0..<4096).map { _ -> UInt8 in
            state = state &* 1_664_525 &+ 1_013_904_223
            return UInt8(truncatingIfNeeded: state >> 24)
        }
        serve("corrupt.png", noise, "image/png")
        serve("signature-only.png", [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a] + noise.prefix(100), "image/png")
        let stripes = PNG.rgb(width: 64, height: 64) { x, y in [UInt8(x * 4), UInt8(y * 4), UInt8((x ^ y) & 0xff)] }.bytes
        serve("truncated.png", Array(stripes.prefix(stripes.count / 2)), "image/png")
        serve("page.html", Array("<!doctype html><html><body>not an image</body></html>".utf8), "text/html")
        serve("page-as-jpeg.jpg", Array("<!doctype html><html><body>not an image</body></html>".utf8), "image/jpeg")
        serve("empty.png", [], "image/png")
        serve("big.png", bigPNG, "image/png")
        serve("bomb.png", bombPNG, "image/png")
        serve("wide-401x100.png", redBlue(width: 401, height: 100).bytes, "image/png")
        serve("wide-400x100.png", redBlue(width: 400, height: 100).bytes, "image/png")
        serve("tall-100x500.png", redBlue(width: 100, height: 500).bytes, "image/png")
        router.get("missing.png") { _, _ in Response(status: .notFound) }
        router.get("broken.png") { _, _ in Response(status: .internalServerError) }
        router.get("redirect/:hops") { _, context in
            let hops = context.parameters.get("hops", as: Int.self) ?? 0
            let location = hops <= 1 ? "/red-blue.jpg" : "/redirect/\(hops - 1)"
            return Response(status: .found, headers: [.location: location])
        }
        router.get("to") { request, _ in
            Response(status: .movedPermanently, headers: [.location: request.uri.queryParameters["url"].map(String.init) ?? "/"])
        }
        router.get("big-chunked.png") { _, _ in
            // No Content-Length: the cap is only found while the body streams in.
            Response(
                status: .ok,
                headers: [.contentType: "image/png"],
                body: ResponseBody { writer in
                    var rest = bigPNG[...]
                    while !rest.isEmpty {
                        try await writer.write(ByteBuffer(bytes: rest.prefix(16_384)))
                        rest = rest.dropFirst(16_384)
                    }
                    try await writer.finish(nil)
                }
            )
        }
        router.get("drip.png") { _, _ in
            // One byte every 100 ms for a minute.
            Response(
                status: .ok,
                headers: [.contentType: "image/png"],
                body: ResponseBody { writer in
                    let bytes = rgbPNG.bytes
                    for index in 0..<600 {
                        try await writer.write(ByteBuffer(bytes: [bytes[index % bytes.count]]))
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    dripsFinished.add(1, ordering: .relaxed)
                    try await writer.finish(nil)
                }
            )
        }
    }

    // MARK: requests and answers

    static func submit(_ client: some TestClientProtocol, _ url: String, size: String = "auto") async throws -> TestResponse {
        try await client.post("/video/submit", json: SubmitValidationTests.body(["image_size": "\"\(size)\""], imageURL: url))
    }

    /// 400 with exactly `{"detail":{"status":"Failed","reason":reason}}`.
    static func expectRefused(_ response: TestResponse, _ reason: String, _ what: String = "", sourceLocation: SourceLocation = #_sourceLocation) {
        let body = String(buffer: response.body)
        #expect(response.status == .badRequest, "\(what): \(response.status) \(body)", sourceLocation: sourceLocation)
        let object = (try? response.jsonObject()) ?? [:]
        let detail = object["detail"] as? [String: Any]
        #expect(object.keys.sorted() == ["detail"] && detail?.keys.sorted() == ["reason", "status"], "\(what): \(body)", sourceLocation: sourceLocation)
        #expect(detail?["status"] as? String == "Failed", "\(what): \(body)", sourceLocation: sourceLocation)
        #expect(detail?["reason"] as? String == reason, "\(what)", sourceLocation: sourceLocation)
    }

    /// Submits `url`; expects 400 with exactly `{"detail":{"status":"Failed","reason":reason}}`.
    static func expectRefused(
        _ client: some TestClientProtocol,
        _ url: String,
        size: String = "auto",
        _ reason: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        expectRefused(try await submit(client, url, size: size), reason, url, sourceLocation: sourceLocation)
    }

    /// Submits `url`; expects 202 with a request id, and returns it.
    static func expectAccepted(
        _ client: some TestClientProtocol,
        _ url: String,
        size: String = "auto",
        _ what: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> String {
        let what = what ?? url
        let response = try await submit(client, url, size: size)
        try #require(response.status == .accepted, "\(what): \(response.status) \(String(buffer: response.body))", sourceLocation: sourceLocation)
        let id = try response.jsonObject()["requestId"] as? String ?? ""
        try #require(id.count == 32, "\(what): requestId \(id)", sourceLocation: sourceLocation)
        return id
    }

    /// `i2v_image_failures_total` by cause, from `/metrics`.
    static func imageFailures(_ client: some TestClientProtocol) async throws -> [String: Int] {
        let text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
        var counts: [String: Int] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("i2v_image_failures_total{") {
            guard let open = line.range(of: "cause=\""), let close = line[open.upperBound...].firstIndex(of: "\""),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            counts[String(line[open.upperBound..<close]), default: 0] += Int(value)
        }
        return counts
    }

    /// Refused images leave no prepared input behind.
    static func expectNoInputs(_ dataDir: URL, sourceLocation: SourceLocation = #_sourceLocation) {
        let inputs = (try? FileManager.default.contentsOfDirectory(atPath: dataDir.appending(path: "inputs").path)) ?? []
        #expect(inputs.isEmpty, "left behind: \(inputs)", sourceLocation: sourceLocation)
    }

    static func port(of base: String) -> Int {
        Int(base.split(separator: ":").last ?? "") ?? 0
    }

    /// The head of the prepared input `<dataDir>/inputs/<id>.png`.
    struct PreparedPNG {
        var width: Int
        var height: Int
        var bitDepth: Int
        var colourType: Int
        var size: [Int] { [width, height] }

        init(_ dataDir: URL, _ id: String) throws {
            let bytes = Array(try Data(contentsOf: dataDir.appending(path: "inputs/\(id).png")))
            try #require(bytes.count > 33 && bytes.prefix(8).elementsEqual(PNG.signature) && Array(bytes[12..<16]) == Array("IHDR".utf8))
            func int(_ at: Int) -> Int { bytes[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
            width = int(16)
            height = int(20)
            bitDepth = Int(bytes[24])
            colourType = Int(bytes[25])
        }
    }

    /// ffmpeg decodes the prepared PNG to RGB (Foundation on Linux has no PNG decoder).
    enum FFmpeg {
        static let path = ["/usr/bin/ffmpeg", "/usr/local/bin/ffmpeg"].first { FileManager.default.isExecutableFile(atPath: $0) }

        /// Present, or required anyway (`make test` sets I2V_TEST_STRICT=1 and installs ffmpeg).
        static var usable: Bool { path != nil || ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1" }

        static func rgb(_ file: URL, width: Int, height: Int) async throws -> [UInt8] {
            let path = try #require(path, "ffmpeg is not installed")
            let (data, status) = try await runTool(path, ["-v", "error", "-i", file.path, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            try #require(status == 0 && data.count == width * height * 3, "ffmpeg gave \(data.count) bytes for \(width)×\(height)")
            return Array(data)
        }
    }

    // MARK: PNG writer

    /// A minimal PNG writer (8-bit, stored deflate blocks, filter 0), for pictures a test needs exactly.

    static func rawResponse(headers: [(String, String)], body: [UInt8]) -> [UInt8] {
        var head = "HTTP/1.1 200 OK\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        return Array((head + "\r\n").utf8) + body
    }
}
