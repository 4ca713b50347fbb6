import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import I2VTestSupport
import NIOCore
import Synchronization
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP

/// LoRAs given by URL (`I2V_LORA_URLS`): downloaded over real HTTP from a loopback server into a real catalog
/// directory, stored by their content, and every hostile one refused with its reason and nothing left behind.
/// And the limit on the ranks of a job's LoRAs added together.
@Suite struct LoRAURLTests {
    static let model = LoRAAPITests.model
    /// The LoRA the URL serves: rank 3, unlike any catalog file.
    static let good = LoRAFiles.lora(rank: 3)
    static let storedName = "url-" + LoRAFiles.sha256(good).prefix(16)
    /// The cap the tests set on downloads, well above `good` and well below what `endless` streams.
    static let maxBytes = 1_000_000

    /// A service whose catalog holds `style` (rank 4) and `soft` (rank 2), with LoRAs by URL on (unless
    /// `values` says otherwise) and downloads capped at `maxBytes`.
    static func withService(
        _ values: [String: ConfigValue] = [:],
        worker: FakeWorker = FakeWorker(),
        _ body: @Sendable (_ client: any TestClientProtocol, _ catalog: URL) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let catalog = try LoRAFiles.catalog(in: directory.url, [("style", LoRAFiles.lora(rank: 4)), ("soft", LoRAFiles.lora(rank: 2))])
        var settings: [String: ConfigValue] = [
            "i2v.loraDir": .init(stringLiteral: catalog.path), "i2v.loraMaxRank": 8, "i2v.loraUrls": true,
            "i2v.loraUrlMaxBytes": .init(integerLiteral: maxBytes),
        ]
        settings.merge(values) { _, given in given }
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, model: model, settings)
        try await app.test(.router) { client in try await body(client, catalog) }
    }

    /// The loopback server of the LoRA files, good and bad.
    static func routes(_ router: Router<BasicRequestContext>) {
        func serve(_ path: String, _ bytes: Data) {
            router.get(RouterPath(stringLiteral: path)) { _, _ in
                Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
        }
        serve("lora/good.safetensors", good)
        // A pickled state dict (torch.save) renamed to .safetensors.
        serve("lora/pickle.safetensors", Data([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) + Data(count: 4096))
        serve("lora/truncated.safetensors", good.prefix(good.count - 100))
        serve("lora/plain.safetensors", LoRAFiles.safetensors([("blocks.0.attn1.to_q.weight", "F32", [24, 24])]))
        // A header claiming tensors of 2^40 bytes the file does not hold.
        serve(
            "lora/huge-claim.safetensors",
            {
                let header = Data(#"{"transformer.x.lora_A.weight":{"dtype":"F32","shape":[1048576,262144],"data_offsets":[0,1099511627776]}}"#.utf8)
                return LoRAFiles.lengthPrefix(UInt64(header.count)) + header
            }()
        )
        serve("lora/deep.safetensors", LoRAFiles.lora(rank: 16))
        serve("lora/wide.safetensors", LoRAFiles.lora(rank: 1, dim: 5120, ffn: 8, dtype: "BF16"))
        serve("lora/empty.safetensors", Data())
        router.get("lora/gone.safetensors") { _, _ in Response(status: .notFound) }
        router.get("lora/endless.safetensors") { _, _ in
            // No Content-Length: the cap is only found while the body streams in.
            Response(
                status: .ok,
                headers: [.contentType: "application/octet-stream"],
                body: ResponseBody { writer in
                    for _ in 0..<128 { try await writer.write(ByteBuffer(bytes: [UInt8](repeating: 0x41, count: 16_384))) }
                    try await writer.finish(nil)
                }
            )
        }
    }

    /// Everything in the catalog directory, hidden files too.
    static func listing(_ catalog: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: catalog.path)) ?? []).sorted()
    }

    static func submitBody(_ loras: String, imageURL: String = "http://127.0.0.1:9/image.png") -> String {
        LoRAAPITests.submitBody(loras, imageURL: imageURL)
    }

    @Test func theSettingsAreOffAndCappedAtTwoGiBByDefault() throws {
        let directory = try TemporaryDirectory()
        let configuration = testConfiguration(dataDir: directory.url)
        #expect(!configuration.loraURLs)
        #expect(configuration.loraURLMaxBytes == 2 << 30)
        let on = testConfiguration(dataDir: directory.url, ["i2v.loraUrls": true, "i2v.loraUrlMaxBytes": 1000, "i2v.loraUrlTimeoutSeconds": 5])
        #expect(on.loraURLs && on.loraURLMaxBytes == 1000 && on.loraURLTimeout == .seconds(5))
        #expect(configuration.loraURLReuse == .seconds(3600))
        #expect(testConfiguration(dataDir: directory.url, ["i2v.loraUrlCacheSeconds": 0]).loraURLReuse == .zero)
    }

    /// Off, a `url` is refused by both APIs at its place, and nothing is fetched.
    @Test func withURLsOffAURLItemIsRefusedNamingTheField() async throws {
        try await withImageServer(Self.routes) { base in
            try await Self.withService(["i2v.loraUrls": false]) { client, catalog in
                let before = Self.listing(catalog)
                let url = "\(base)/lora/good.safetensors"
                let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"name":"style"},{"url":"\#(url)","scale":0.5}]"#))
                #expect(native.status == .unprocessableContent, "\(String(buffer: native.body))")
                let issue = try #require(native.validationIssues.first)
                #expect((issue["loc"] as? [Any])?.map { "\($0)" } == ["body", "loras", "1", "url"], "\(issue)")
                #expect((issue["msg"] as? String)?.contains("I2V_LORA_URLS") == true, "\(issue)")

                let openAI = try await client.createVideo(json: [
                    "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "\(base)/image.png"], "loras": [["url": url]],
                ])
                #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
                #expect(try openAI.openAIError()["param"] as? String == "loras")
                let form = try await client.createVideo(form: [
                    .text("prompt", "A dancing cat in the style of Van Gogh"), .text("input_reference[image_url]", "\(base)/image.png"),
                    .text("loras[][url]", url), .text("loras[][scale]", "1"),
                ])
                #expect(form.status == .badRequest, "\(String(buffer: form.body))")
                #expect(try form.openAIError()["param"] as? String == "loras")
                #expect(Self.listing(catalog) == before)
            }
        }
    }

    /// On: the file is stored under its content's name, listed, pinned by its SHA-256, given to the worker;
    /// the same URL again finds the file there and leaves it as it is.
    @Test func aURLLoRAIsStoredByItsContentListedPinnedAndReused() async throws {
        let worker = FakeWorker()
        try await withImageServer(Self.routes) { base in
            try await Self.withService(worker: worker) { client, catalog in
                let url = "\(base)/lora/good.safetensors"
                let sha256 = LoRAFiles.sha256(Self.good)
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"url":"\#(url)","scale":0.5},{"name":"soft"}]"#)
                let done = try await client.waitFor(id, status: "Succeed")
                let reported = try #require((done["results"] as? [String: Any])?["loras"] as? [[String: Any]], "\(done)")
                #expect(reported.map { $0["name"] as? String } == [Self.storedName, "soft"])
                #expect(reported.first?["sha256"] as? String == sha256)
                #expect(reported.first?["scale"] as? Double == 0.5)

                let file = catalog.appending(path: Self.storedName + ".safetensors")
                #expect(try Data(contentsOf: file) == Self.good)
                #expect(Self.listing(catalog) == ["soft.safetensors", Self.storedName + ".safetensors", "style.safetensors"].sorted())
                let job = try #require(await worker.jobs.first { $0.taskID == id })
                #expect(job.loras?.first == WorkerLoRA(name: Self.storedName, path: file.path, scale: 0.5, sha256: sha256))

                let listing = try await client.v1(.get, "/loras").jsonObject()
                #expect(listing["urls"] as? Bool == true, "\(listing)")
                let listed = listing["loras"] as? [[String: Any]]
                let stored = try #require(listed?.first { $0["name"] as? String == Self.storedName }, "\(String(describing: listed))")
                #expect(stored["sha256"] as? String == sha256 && stored["rank"] as? Int == 3)

                // Again, through the OpenAI-style API: the same file, untouched.
                let attributes = try FileManager.default.attributesOfItem(atPath: file.path)
                let again = try await client.createVideo(json: [
                    "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "\(base)/image.png"], "loras": [["url": url]],
                ])
                #expect(again.status == .ok, "\(String(buffer: again.body))")
                let video = try again.jsonObject()
                #expect((video["loras"] as? [[String: Any]])?.first?["sha256"] as? String == sha256, "\(video)")
                let after = try FileManager.default.attributesOfItem(atPath: file.path)
                #expect((after[.systemFileNumber] as? NSNumber)?.intValue == (attributes[.systemFileNumber] as? NSNumber)?.intValue)
                #expect(after[.modificationDate] as? Date == attributes[.modificationDate] as? Date)
                #expect(Self.listing(catalog) == ["soft.safetensors", Self.storedName + ".safetensors", "style.safetensors"].sorted())
                // And by its name, with no download.
                let named = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"\#(Self.storedName)"}]"#)
                #expect(try await client.waitFor(named, status: "Succeed")["status"] as? String == "Succeed")
            }
        }
    }

    /// Counts the requests a route of the loopback server answered.
    final class Hits: Sendable {
        private let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
        func add() { count.withLock { $0 += 1 } }
    }

    /// The same URL again within `I2V_LORA_URL_CACHE_SECONDS` is not downloaded again while its file is in the
    /// catalog; another URL, a removed file, or a cache time of 0 is downloaded again.
    @Test func aURLGivenAgainIsDownloadedOnceWhileItsFileIsKept() async throws {
        let downloads = Hits()
        let routes: @Sendable (Router<BasicRequestContext>) -> Void = { router in
            router.get("counted/good.safetensors") { _, _ in
                downloads.add()
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: Self.good)))
            }
        }
        try await withImageServer(routes) { base in
            let url = "\(base)/counted/good.safetensors"
            let loras = #","loras":[{"url":"\#(url)"}]"#
            try await Self.withService { client, catalog in
                for _ in 0..<3 { _ = try await client.submit(imageURL: "\(base)/image.png", extra: loras) }
                #expect(downloads.value == 1)
                // Another URL, though it serves the same file.
                _ = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"url":"\#(url)?v=2"}]"#)
                #expect(downloads.value == 2)
                // The stored file is gone: downloaded and stored again.
                let file = catalog.appending(path: Self.storedName + ".safetensors")
                try FileManager.default.removeItem(at: file)
                _ = try await client.submit(imageURL: "\(base)/image.png", extra: loras)
                #expect(downloads.value == 3)
                #expect(try Data(contentsOf: file) == Self.good)
            }
            try await Self.withService(["i2v.loraUrlCacheSeconds": 0]) { client, _ in
                for _ in 0..<2 { _ = try await client.submit(imageURL: "\(base)/image.png", extra: loras) }
                #expect(downloads.value == 5)
            }
        }
    }

    struct Hostile: CustomTestStringConvertible, Sendable {
        var label: String
        /// The path on the loopback server.
        var path: String
        var says: String
        var testDescription: String { label }
    }

    static let hostile: [Hostile] = [
        Hostile(label: "a pickle renamed .safetensors", path: "lora/pickle.safetensors", says: "is not a LoRA in safetensors form: it claims a"),
        Hostile(label: "a truncated file", path: "lora/truncated.safetensors", says: "is not a LoRA in safetensors form: it has"),
        Hostile(label: "a header claiming huge tensors", path: "lora/huge-claim.safetensors", says: "is not a LoRA in safetensors form: it has tensor"),
        Hostile(label: "no LoRA weights", path: "lora/plain.safetensors", says: "no lora_A/lora_B"),
        Hostile(label: "an empty file", path: "lora/empty.safetensors", says: "shorter than a safetensors header"),
        Hostile(label: "a rank above the limit", path: "lora/deep.safetensors", says: "has rank 16, above the limit of 8 (I2V_LORA_MAX_RANK)"),
        Hostile(label: "another model's width", path: "lora/wide.safetensors", says: "does not fit \(model): its layers are 5120 wide"),
        Hostile(
            label: "streaming past the cap without Content-Length", path: "lora/endless.safetensors",
            says: "download failed: the file is larger than 1000000 bytes (I2V_LORA_URL_MAX_BYTES)"),
        Hostile(label: "an HTTP error", path: "lora/gone.safetensors", says: "download failed: HTTP status 404"),
    ]

    /// Each is a 400 naming the url and why, and leaves the catalog directory as it was.
    @Test(arguments: hostile)
    func aBadURLLoRAIsRefusedAndNothingIsStored(_ bad: Hostile) async throws {
        try await withImageServer(Self.routes) { base in
            try await Self.withService { client, catalog in
                let before = Self.listing(catalog)
                let url = "\(base)/\(bad.path)"
                let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"url":"\#(url)"}]"#))
                #expect(native.status == .badRequest, "\(String(buffer: native.body))")
                #expect(native.reason().hasPrefix("LoRA \(url) ") && native.reason().contains(bad.says), "\(native.reason())")
                #expect(Self.listing(catalog) == before)

                let openAI = try await client.createVideo(json: [
                    "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "\(base)/image.png"], "loras": [["url": url]],
                ])
                #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
                let error = try openAI.openAIError()
                #expect(error["param"] as? String == "loras" && error["code"] as? String == "unusable_lora", "\(error)")
                #expect((error["message"] as? String)?.contains(bad.says) == true, "\(error)")
                #expect(Self.listing(catalog) == before)
                // The server goes on.
                #expect(try await client.v1(.get, "/loras").status == .ok)
            }
        }
    }

    /// A head announcing 10 GB is refused from the head, without waiting for a body that never comes.
    @Test func aContentLengthAboveTheCapIsRefusedFromTheHead() async throws {
        let lyingHead = try await RawServer.start(
            response: Array("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000000\r\n\r\n".utf8),
            closeAfterResponse: false
        )
        defer { lyingHead.close() }
        try await Self.withService { client, catalog in
            let before = Self.listing(catalog)
            let url = "http://127.0.0.1:\(lyingHead.port)/big.safetensors"
            let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"url":"\#(url)"}]"#))
            #expect(native.status == .badRequest, "\(String(buffer: native.body))")
            #expect(
                native.reason() == "LoRA \(url) download failed: the file is larger than \(Self.maxBytes) bytes (I2V_LORA_URL_MAX_BYTES)",
                "\(native.reason())")
            #expect(Self.listing(catalog) == before)
        }
    }

    /// Without the private hosts allowance a private or loopback address is refused before any connection
    /// (the loopback server that would serve the file is never reached); link-local is refused even with it.
    @Test func blockedAddressesAreRefused() async throws {
        try await withImageServer(Self.routes) { base in
            try await Self.withService(["i2v.allowPrivateImageHosts": false]) { client, catalog in
                let before = Self.listing(catalog)
                for (url, address) in [
                    ("http://10.0.0.1/style.safetensors", "10.0.0.1"), ("\(base)/lora/good.safetensors", "127.0.0.1"),
                    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
                ] {
                    let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"url":"\#(url)"}]"#))
                    #expect(native.status == .badRequest, "\(url): \(String(buffer: native.body))")
                    #expect(native.reason() == "LoRA \(url) download failed: the host resolves to a blocked address (\(address))", "\(native.reason())")
                }
                #expect(Self.listing(catalog) == before)
            }
            try await Self.withService { client, catalog in
                let before = Self.listing(catalog)
                let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"url":"http://169.254.169.254/x.safetensors"}]"#))
                #expect(native.status == .badRequest)
                #expect(native.reason().contains("blocked address (169.254.169.254)"), "\(native.reason())")
                #expect(Self.listing(catalog) == before)
            }
        }
    }

    /// Both of name and url, a url twice, a url that is no http(s) URL: 422 at the item.
    @Test func aURLItemIsCheckedAtItsPlace() async throws {
        try await Self.withService { client, _ in
            for (loras, loc) in [
                (#"[{"name":"style","url":"http://127.0.0.1:9/a.safetensors"}]"#, ["loras", "0", "url"]),
                (#"[{"url":"http://127.0.0.1:9/a.safetensors"},{"url":"http://127.0.0.1:9/a.safetensors"}]"#, ["loras", "1", "url"]),
                (#"[{"url":"ftp://127.0.0.1/a.safetensors"}]"#, ["loras", "0", "url"]),
                (#"[{"url":42}]"#, ["loras", "0", "url"]),
                (#"[{"scale":1}]"#, ["loras", "0", "name"]),
            ] {
                let native = try await client.post("/video/submit", json: Self.submitBody(loras))
                #expect(native.status == .unprocessableContent, "\(loras): \(String(buffer: native.body))")
                let issue = try #require(native.validationIssues.first)
                #expect((issue["loc"] as? [Any])?.map { "\($0)" } == ["body"] + loc, "\(loras): \(issue)")
            }
        }
    }

    /// The ranks of a job's LoRAs added together are held to `I2V_LORA_MAX_RANK`; a URL LoRA that would pass
    /// it is not stored.
    @Test func loRAsWhoseRanksAddUpAboveTheLimitAre400() async throws {
        try await withImageServer(Self.routes) { base in
            try await Self.withService(["i2v.loraMaxRank": 5]) { client, catalog in
                let before = Self.listing(catalog)
                let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"name":"style"},{"name":"soft"}]"#))
                #expect(native.status == .badRequest, "\(String(buffer: native.body))")
                #expect(native.reason() == "loras: their ranks add up to 6, above the limit of 5 (I2V_LORA_MAX_RANK)", "\(native.reason())")
                let openAI = try await client.createVideo(json: [
                    "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "\(base)/image.png"],
                    "loras": [["name": "style"], ["name": "soft"]],
                ])
                #expect(openAI.status == .badRequest)
                let error = try openAI.openAIError()
                #expect(error["param"] as? String == "loras" && (error["message"] as? String)?.contains("add up to 6") == true, "\(error)")

                let url = "\(base)/lora/good.safetensors"
                let withURL = try await client.post("/video/submit", json: Self.submitBody(#"[{"name":"style"},{"url":"\#(url)"}]"#))
                #expect(withURL.status == .badRequest, "\(String(buffer: withURL.body))")
                #expect(
                    withURL.reason() == "LoRA \(url) has rank 3, which brings the job's LoRA ranks to 7, above the limit of 5 (I2V_LORA_MAX_RANK)",
                    "\(withURL.reason())")
                #expect(Self.listing(catalog) == before)

                // Each alone is within the limit.
                let alone = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style"}]"#)
                #expect(try await client.waitFor(alone, status: "Succeed")["status"] as? String == "Succeed")
            }
        }
    }
}
