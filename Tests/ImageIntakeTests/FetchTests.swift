import Hummingbird
import I2VTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import ImageIntake

/// How many `/slow.png` drips ran to their end (none should: the download deadline cuts them off).
let slowDripsFinished = Atomic<Int>(0)

extension IntakeSuites {
    /// Hostile and broken servers on loopback, each with the exact cause and reason expected.
    @Suite("Download")
    struct DownloadTests {
        static let png = TestImages.encode(TestImages.redBlue(width: 64, height: 48), .png)

        /// Routes shared by most tests.
        static func routes(_ router: Router<BasicRequestContext>) {
            router.get("ok.png") { _, _ in
                Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: png)))
            }
            router.get("corrupt.png") { _, _ in
                var random = SystemRandomNumberGenerator()
                let bytes = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &random) }
                return Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
            router.get("page.html") { _, _ in
                Response(
                    status: .ok,
                    headers: [.contentType: "image/jpeg"],
                    body: .init(byteBuffer: ByteBuffer(string: "<!doctype html><html><body>not an image</body></html>"))
                )
            }
            router.get("missing.png") { _, _ in Response(status: .notFound) }
            router.get("broken.png") { _, _ in Response(status: .internalServerError) }
            router.get("redirect/:hops") { _, context in
                let hops = context.parameters.get("hops", as: Int.self) ?? 0
                let location = hops <= 1 ? "/ok.png" : "/redirect/\(hops - 1)"
                return Response(status: .found, headers: [.location: location])
            }
            router.get("to") { request, _ in
                Response(status: .movedPermanently, headers: [.location: request.uri.queryParameters["url"].map(String.init) ?? "/"])
            }
            router.get("slow.png") { _, _ in
                // One byte every 100 ms: each read is quick, only the whole-download deadline can stop it.
                Response(
                    status: .ok,
                    headers: [.contentType: "image/png"],
                    body: ResponseBody { writer in
                        // 600 bytes over a minute; a download that read them all was not cut off.
                        for index in 0..<600 {
                            try await writer.write(ByteBuffer(bytes: [png[index % png.count]]))
                            try await Task.sleep(for: .milliseconds(100))
                        }
                        slowDripsFinished.add(1, ordering: .relaxed)
                        try await writer.finish(nil)
                    }
                )
            }
            router.get("chunked-big.png") { _, _ in
                // Chunked, no Content-Length: 4 MiB in 64 KiB chunks.
                Response(
                    status: .ok,
                    headers: [.contentType: "image/png"],
                    body: ResponseBody { writer in
                        try await writer.write(ByteBuffer(bytes: png))
                        let chunk = ByteBuffer(repeating: 0, count: 64 * 1024)
                        for _ in 0..<64 {
                            try await writer.write(chunk)
                        }
                        try await writer.finish(nil)
                    }
                )
            }
            router.get("bomb.png") { _, _ in
                Response(
                    status: .ok,
                    headers: [.contentType: "image/png"],
                    body: .init(byteBuffer: ByteBuffer(bytes: TestImages.pngClaiming(width: 60000, height: 60000)))
                )
            }
            router.get("bomb.jpg") { _, _ in
                Response(
                    status: .ok,
                    headers: [.contentType: "image/jpeg"],
                    body: .init(byteBuffer: ByteBuffer(bytes: TestImages.jpegClaiming(width: 65000, height: 65000)))
                )
            }
            router.get("host-checked.png") { request, _ in
                // Only answers requests that name the original host (Host header kept under dnsOverride).
                guard let authority = request.head.authority, authority.hasPrefix("rebind.invalid:") else {
                    return Response(status: .badRequest)
                }
                return Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: png)))
            }
        }

        @Test("a good PNG over HTTP")
        func served() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    let image = try await intake.prepare(url: "http://127.0.0.1:\(port)/ok.png", size: .auto, planner: p480)
                    #expect(image.sourceWidth == 64 && image.sourceHeight == 48)
                    #expect(image.width == 720 && image.height == 544)
                    #expect(image.sourceFormat == "png" && image.sourceBytes == Self.png.count)
                    #expect(image.timings.fetch > .zero && image.timings.decode > .zero && image.timings.encode > .zero)
                    let decoded = TestImages.decode(image.png)
                    #expect(decoded.width == 720 && decoded.height == 544 && decoded.bands == 3)
                }
            }
        }

        @Test("corrupt bytes labelled image/png")
        func corrupt() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    await expectFailure(.notAnImage, "not a decodable image") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/corrupt.png", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("an HTML page labelled image/jpeg")
        func html() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    await expectFailure(.notAnImage, "not a decodable image") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/page.html", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("HTTP 404 and 500")
        func statuses() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    await expectFailure(.httpStatus, "image download failed: HTTP status 404") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/missing.png", size: .auto, planner: p480)
                    }
                    await expectFailure(.httpStatus, "image download failed: HTTP status 500") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/broken.png", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("a server that never answers: the timeout bounds the download")
        func hangs() async throws {
            try await withRawServer(response: nil) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(1), allowPrivateHosts: true)) { intake in
                    let (_, elapsed) = await measure {
                        await expectFailure(.timedOut, "image download failed: timed out after 1 s") {
                            try await intake.prepare(url: "http://127.0.0.1:\(port)/hang.png", size: .auto, planner: p480)
                        }
                    }
                    // Not cut short. That it is cut at all is the test's time limit (and the reason above).
                    #expect(elapsed >= .milliseconds(900))
                }
            }
        }

        @Test("a body that drips in: the timeout bounds the whole download, not each read")
        func drips() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(1), allowPrivateHosts: true)) { intake in
                    await expectFailure(.timedOut, "image download failed: timed out after 1 s") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/slow.png", size: .auto, planner: p480)
                    }
                    // The server was still dripping when the download gave up: only the whole-download deadline
                    // could have ended it, since every single read was quick.
                    #expect(slowDripsFinished.load(ordering: .relaxed) == 0)
                }
            }
        }

        @Test("redirects: 3 are followed, a 5-hop chain is refused")
        func redirectChains() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    let image = try await intake.prepare(url: "http://127.0.0.1:\(port)/redirect/3", size: .auto, planner: p480)
                    #expect(image.sourceWidth == 64)
                    await expectFailure(.tooManyRedirects, "image download failed: too many redirects (more than 3)") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/redirect/4", size: .auto, planner: p480)
                    }
                    await expectFailure(.tooManyRedirects, "image download failed: too many redirects (more than 3)") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/redirect/5", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("Content-Length over the cap is refused before the body is read")
        func declaredTooLarge() async throws {
            let head = rawHTTPResponse(headers: [("Content-Type", "image/png"), ("Content-Length", "100000000")], body: [])
            // The server sends the head and then nothing: waiting for the body would hit the timeout.
            try await withRawServer(response: head, closeAfterResponse: false) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60), maxBytes: 1_048_576, allowPrivateHosts: true)) {
                    intake in
                    // Refused from the headers: waiting for the body that never comes would end in a timeout instead.
                    await expectFailure(.tooLarge, "image download failed: image is larger than 1048576 bytes") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/big.png", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("a chunked body without length over the cap is cut off while streaming")
        func chunkedTooLarge() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60), maxBytes: 1_048_576, allowPrivateHosts: true)) {
                    intake in
                    await expectFailure(.tooLarge, "image download failed: image is larger than 1048576 bytes") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/chunked-big.png", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("a close-delimited body (no length at all) over the cap is cut off while streaming")
        func closeDelimitedTooLarge() async throws {
            let response = rawHTTPResponse(
                headers: [("Content-Type", "image/png"), ("Connection", "close")],
                body: Self.png + [UInt8](repeating: 0, count: 3 * 1_048_576)
            )
            try await withRawServer(response: response) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60), maxBytes: 1_048_576, allowPrivateHosts: true)) {
                    intake in
                    await expectFailure(.tooLarge, "image download failed: image is larger than 1048576 bytes") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/close.png", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("a body longer than its Content-Length: only the declared bytes are read")
        func lyingContentLength() async throws {
            // The PNG, then 3 MiB the head does not announce (they would break the 1 MiB cap if read).
            let response = rawHTTPResponse(
                headers: [("Content-Type", "image/png"), ("Content-Length", "\(Self.png.count)")],
                body: Self.png + [UInt8](repeating: 0xff, count: 3 * 1_048_576)
            )
            try await withRawServer(response: response) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60), maxBytes: 1_048_576, allowPrivateHosts: true)) {
                    intake in
                    let image = try await intake.prepare(url: "http://127.0.0.1:\(port)/lie.png", size: .auto, planner: p480)
                    #expect(image.sourceBytes == Self.png.count)
                }
            }
        }

        @Test("a body shorter than its Content-Length is a network error, not a truncated image")
        func shortBody() async throws {
            let response = rawHTTPResponse(
                headers: [("Content-Type", "image/png"), ("Content-Length", "\(Self.png.count + 1000)")],
                body: Self.png
            )
            try await withRawServer(response: response) { port in
                try await withIntake { intake in
                    let error = await intakeError {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/short.png", size: .auto, planner: p480)
                    }
                    #expect(error?.cause == .network, "\(String(describing: error))")
                }
            }
        }

        @Test("a PNG whose header claims 60000×60000 is refused fast, without decoding")
        func pixelBomb() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    // The files hold one pixel's data: only the header probe can know the pixel counts below
                    // (a decode would fail on the missing data instead).
                    await expectFailure(.tooManyPixels, "image has 3600000000 pixels, more than the 40000000 allowed") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/bomb.png", size: .auto, planner: p480)
                    }
                    await expectFailure(.tooManyPixels, "image has 4225000000 pixels, more than the 40000000 allowed") {
                        try await intake.prepare(url: "http://127.0.0.1:\(port)/bomb.jpg", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("a redirect to the cloud metadata address is refused")
        func redirectToMetadata() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60)), addressPolicy: loopbackServerOnly) { intake in
                    let base = "http://127.0.0.1:\(port)"
                    // The server itself is reachable (exempt in this test) ...
                    _ = try await intake.prepare(url: "\(base)/ok.png", size: .auto, planner: p480)
                    // ... but none of these targets are.
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (169.254.169.254)") {
                        try await intake.prepare(
                            url: "\(base)/to?url=http://169.254.169.254/latest/meta-data/", size: .auto, planner: p480
                        )
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (::1)") {
                        try await intake.prepare(url: "\(base)/to?url=http://%5B::1%5D:\(port)/ok.png", size: .auto, planner: p480)
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (localhost)") {
                        try await intake.prepare(url: "\(base)/to?url=http://localhost:\(port)/ok.png", size: .auto, planner: p480)
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (10.0.0.1)") {
                        try await intake.prepare(url: "\(base)/to?url=http://167772161/", size: .auto, planner: p480)
                    }
                    await expectFailure(
                        .invalidURL,
                        "image download failed: redirect to an unusable URL (image URL must use http or https, not file)"
                    ) {
                        try await intake.prepare(url: "\(base)/to?url=file:///etc/passwd", size: .auto, planner: p480)
                    }
                }
            }
        }

        static let oddSpellings = ["2130706433", "0x7f.1", "017700000001", "127.1", "0x7f000001", "127.0.0.1"]

        @Test("loopback in any spelling is refused when private hosts are not allowed")
        func oddSpellingsBlocked() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60))) { intake in
                    for host in Self.oddSpellings {
                        await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (127.0.0.1)") {
                            try await intake.prepare(url: "http://\(host):\(port)/ok.png", size: .auto, planner: p480)
                        }
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (::ffff:127.0.0.1)") {
                        try await intake.prepare(url: "http://[::ffff:127.0.0.1]:\(port)/ok.png", size: .auto, planner: p480)
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (::1)") {
                        try await intake.prepare(url: "http://[::1]:\(port)/ok.png", size: .auto, planner: p480)
                    }
                    for host in ["localhost", "LocalHost.", "api.localhost"] {
                        await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (\(host))") {
                            try await intake.prepare(url: "http://\(host):\(port)/ok.png", size: .auto, planner: p480)
                        }
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (169.254.169.254)") {
                        try await intake.prepare(url: "http://169.254.169.254/latest/meta-data/", size: .auto, planner: p480)
                    }
                    await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (0.0.0.0)") {
                        try await intake.prepare(url: "http://0/", size: .auto, planner: p480)
                    }
                }
            }
        }

        @Test("the same spellings are served when private hosts are allowed")
        func oddSpellingsAllowed() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    for host in Self.oddSpellings + ["[::ffff:127.0.0.1]", "localhost"] {
                        let image = try await intake.prepare(url: "http://\(host):\(port)/ok.png", size: .auto, planner: p480)
                        #expect(image.sourceWidth == 64, "\(host)")
                    }
                }
            }
        }

        @Test("the client connects to the checked address, not to a second lookup (DNS rebinding)")
        func connectsToCheckedAddress() async throws {
            // Only our resolver knows this name (.invalid never resolves): the download can only work if the
            // HTTP client connects to the address we checked, and the server sees the original Host header.
            let resolver = HostResolver { host throws(ImageIntakeError) in
                guard host == "rebind.invalid" else {
                    throw ImageIntakeError(.dnsFailure, "image download failed: DNS lookup failed for \(host)")
                }
                return [.v4(0x7f00_0001)]
            }
            try await withTestServer(Self.routes) { port in
                try await withIntake(
                    ImageIntakeConfiguration(timeout: .seconds(60)),
                    resolver: resolver,
                    addressPolicy: loopbackServerOnly
                ) { intake in
                    let image = try await intake.prepare(
                        url: "http://rebind.invalid:\(port)/host-checked.png", size: .auto, planner: p480
                    )
                    #expect(image.sourceWidth == 64)
                }
            }
        }

        @Test("when connecting to the first address fails, the next resolved address is tried")
        func nextAddress() async throws {
            // ::1 first (nothing listens there: refused, or unreachable without IPv6), then the server.
            let resolver = HostResolver { _ throws(ImageIntakeError) in [.v6(1), .v4(0x7f00_0001)] }
            try await withTestServer(Self.routes) { port in
                try await withIntake(resolver: resolver) { intake in
                    let image = try await intake.prepare(url: "http://dual.invalid:\(port)/ok.png", size: .auto, planner: p480)
                    #expect(image.sourceWidth == 64)
                }
            }
        }

        @Test("a name with any blocked address is refused, even next to a public one")
        func mixedAddresses() async throws {
            let resolver = HostResolver { _ throws(ImageIntakeError) in
                [.v4(0x5db8_d822), IPAddress(literal: "::ffff:169.254.169.254")!]
            }
            try await withIntake(ImageIntakeConfiguration(timeout: .seconds(60)), resolver: resolver) { intake in
                await expectFailure(.blockedAddress, "image download failed: image host resolves to a blocked address (::ffff:169.254.169.254)") {
                    try await intake.prepare(url: "http://mixed.example/a.png", size: .auto, planner: p480)
                }
            }
        }

        @Test("https to a server that does not speak TLS is a TLS error")
        func tlsFailure() async throws {
            try await withTestServer(Self.routes) { port in
                try await withIntake { intake in
                    let error = await intakeError {
                        try await intake.prepare(url: "https://127.0.0.1:\(port)/ok.png", size: .auto, planner: p480)
                    }
                    #expect(error?.cause == .tls, "\(String(describing: error))")
                    #expect(error?.reason.hasPrefix("image download failed: TLS error with 127.0.0.1") == true)
                }
            }
        }

        @Test("DNS failure, refused connection, credentials")
        func otherFailures() async throws {
            try await withIntake { intake in
                await expectFailure(.dnsFailure, "image download failed: DNS lookup failed for host.invalid") {
                    try await intake.prepare(url: "http://host.invalid/a.png", size: .auto, planner: p480)
                }
                // A port held without a listener: nothing listens there, and no other test's server can take it.
                let closed = try ReservedPort()
                let port = closed.port
                await expectFailure(.connectionRefused, "image download failed: connection refused") {
                    try await intake.prepare(url: "http://127.0.0.1:\(port)/a.png", size: .auto, planner: p480)
                }
                await expectFailure(.credentialsInURL, "image URL must not contain a user name or password") {
                    try await intake.prepare(url: "http://user:secret@127.0.0.1:\(port)/a.png", size: .auto, planner: p480)
                }
                closed.release()
            }
        }
    }
}
