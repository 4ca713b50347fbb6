import Configuration
import Crypto
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP

/// Safetensors files made in the test: tensors of the given dtypes and shapes, their data laid end to end.
enum LoRAFiles {
    /// A LoRA catalog directory `named` inside `directory`, holding `files` (name without `.safetensors`, bytes).
    static func catalog(in directory: URL, named: String = "catalog", _ files: [(String, Data)]) throws -> URL {
        let catalog = directory.appending(path: named)
        try FileManager.default.createDirectory(at: catalog, withIntermediateDirectories: true)
        for (name, data) in files { try data.write(to: catalog.appending(path: "\(name).safetensors")) }
        return catalog
    }

    static func safetensors(_ tensors: [(name: String, dtype: String, shape: [Int])]) -> Data {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var offset = 0
        for tensor in tensors {
            let bytes = tensor.shape.reduce(1, *) * (tensor.dtype == "F32" ? 4 : 2)
            header[tensor.name] = ["dtype": tensor.dtype, "shape": tensor.shape, "data_offsets": [offset, offset + bytes]]
            offset += bytes
        }
        let json = try! JSONSerialization.data(withJSONObject: header, options: .sortedKeys)
        return lengthPrefix(UInt64(json.count)) + json + Data((0..<offset).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    }

    static func lengthPrefix(_ length: UInt64) -> Data {
        Data((0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) })
    }

    /// A LoRA in diffusers' layout on the attention and feed-forward layers of a transformer `dim` wide, as
    /// the worker's demo user LoRAs are.
    static func lora(rank: Int = 4, dim: Int = 24, ffn: Int = 32, dtype: String = "F32") -> Data {
        var tensors: [(name: String, dtype: String, shape: [Int])] = []
        for block in 0..<2 {
            var layers: [(String, Int, Int)] = []
            for attention in ["attn1", "attn2"] {
                for name in ["to_q", "to_k", "to_v", "to_out.0"] { layers.append(("blocks.\(block).\(attention).\(name)", dim, dim)) }
            }
            layers.append(("blocks.\(block).ffn.net.0.proj", ffn, dim))
            layers.append(("blocks.\(block).ffn.net.2", dim, ffn))
            for (layer, out, input) in layers {
                tensors.append(("transformer.\(layer).lora_A.weight", dtype, [rank, input]))
                tensors.append(("transformer.\(layer).lora_B.weight", dtype, [out, rank]))
            }
        }
        return safetensors(tensors)
    }

    static func sha256(_ data: Data) -> String { Hex.encode(SHA256.hash(data: data)) }
}

/// The catalog adapter: what a LoRA file's header says, read within bounds, and what is not a LoRA left out.
@Suite struct LoRACatalogTests {
    static let demoModels = ModelCatalog.tableIDs.filter { $0.hasSuffix("-demo") }

    @Test func aLoRAsHeaderGivesItsRankWidthModelsAndDigest() async throws {
        let directory = try TemporaryDirectory()
        let bytes = LoRAFiles.lora(rank: 8)
        try bytes.write(to: directory.url.appending(path: "style.safetensors"))
        // The 14B models' width, with a bf16 LoRA of kohya's key names.
        let big = LoRAFiles.safetensors([
            ("lora_unet_blocks_0_self_attn_q.lora_down.weight", "BF16", [2, 5120]),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", "BF16", [5120, 2]),
            ("lora_unet_blocks_0_ffn_0.lora_down.weight", "BF16", [2, 5120]),
            ("lora_unet_blocks_0_ffn_0.lora_up.weight", "BF16", [13824, 2]),
        ])
        try big.write(to: directory.url.appending(path: "wide.safetensors"))
        let catalog = LoRADirectory(directory: directory.url, logger: .init(label: "test"))
        let entries = await catalog.entries()
        #expect(entries.map(\.name) == ["style", "wide"])
        let style = try #require(entries.first)
        #expect(style.rank == 8)
        #expect(style.innerDimension == 24)
        #expect(style.models == Self.demoModels)
        #expect(style.sizeBytes == bytes.count)
        #expect(style.sha256 == LoRAFiles.sha256(bytes))
        #expect(style.fits(model: "wan2.2-ti2v-5b-demo") && !style.fits(model: "wan2.1-i2v-14b-480p"))
        let wide = try #require(entries.last)
        #expect(wide.rank == 2)
        #expect(wide.innerDimension == 5120)
        #expect(wide.models == ["wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.1-flf2v-14b-720p", "wan2.2-i2v-a14b"])
        #expect(await catalog.entry(named: "wide") == wide)
        #expect(await catalog.entry(named: "../wide") == nil)
        #expect(await catalog.entry(named: "missing") == nil)
    }

    struct BadFile: CustomTestStringConvertible, Sendable {
        var label: String
        var bytes: Data
        var reason: String
        var testDescription: String { label }
    }

    static let badFiles: [BadFile] = {
        let good = LoRAFiles.lora()
        let header = LoRAFiles.safetensors([("transformer.x.lora_A.weight", "F32", [4, 24])])
        return [
            // A pickled state dict (torch.save) renamed to .safetensors: its first 8 bytes read as a huge length.
            BadFile(
                label: "pickle bytes", bytes: Data([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) + Data(count: 64),
                reason: "more than"),
            BadFile(label: "header length past the end", bytes: LoRAFiles.lengthPrefix(4096) + Data("{}".utf8), reason: "past the end"),
            BadFile(label: "huge claimed header", bytes: LoRAFiles.lengthPrefix(1 << 40) + Data(count: 64), reason: "more than"),
            BadFile(label: "truncated data", bytes: good.prefix(good.count - 100), reason: "bytes of data"),
            BadFile(label: "data left over", bytes: header + Data(count: 4), reason: "bytes of data where its tensors take"),
            BadFile(
                label: "no LoRA weights",
                bytes: LoRAFiles.safetensors([("blocks.0.attn1.to_q.weight", "F32", [24, 24])]),
                reason: "no lora_A/lora_B"
            ),
            BadFile(label: "not JSON", bytes: LoRAFiles.lengthPrefix(4) + Data("nope".utf8), reason: "not a JSON object"),
            BadFile(label: "shorter than the length", bytes: Data([1, 2, 3]), reason: "shorter than"),
        ]
    }()

    @Test(arguments: badFiles)
    func aFileThatIsNotASafetensorsLoRAIsRefusedAndLeftOut(_ bad: BadFile) async throws {
        let directory = try TemporaryDirectory()
        let file = directory.url.appending(path: "bad.safetensors")
        try bad.bytes.write(to: file)
        let refusal = #expect(throws: SafetensorsRefusal.self) { try SafetensorsHeader.read(path: file.path) }
        #expect(refusal?.reason.contains(bad.reason) == true, "\(String(describing: refusal))")
        try LoRAFiles.lora().write(to: directory.url.appending(path: "good.safetensors"))
        let catalog = LoRADirectory(directory: directory.url, logger: .init(label: "test"))
        #expect(await catalog.entries().map(\.name) == ["good"])
        #expect(await catalog.entry(named: "bad") == nil)
    }

    /// Listing again reads nothing that did not change; a file replaced in place is read again.
    @Test func aReplacedFileIsReadAgain() async throws {
        let directory = try TemporaryDirectory()
        let file = directory.url.appending(path: "style.safetensors")
        try LoRAFiles.lora(rank: 4).write(to: file)
        let catalog = LoRADirectory(directory: directory.url, logger: .init(label: "test"))
        let first = try #require(await catalog.entry(named: "style"))
        #expect(await catalog.entry(named: "style") == first)
        let replaced = LoRAFiles.lora(rank: 16)
        try replaced.write(to: file)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: file.path)
        let second = try #require(await catalog.entry(named: "style"))
        #expect(second.rank == 16 && second.sha256 == LoRAFiles.sha256(replaced))
        let failure = await #expect(throws: LoRAResolutionFailure.self) {
            try await catalog.resolve(TaskLoRA(name: "style", scale: 1, sha256: first.sha256))
        }
        #expect(failure == .changed(name: "style", expected: first.sha256, found: second.sha256))
        try FileManager.default.removeItem(at: file)
        #expect(await catalog.entries().isEmpty)
    }

    /// `I2V_LORA_DIR` defaults to `loras` in the data dir, made at start; the workers get the submit's rank limit.
    @Test func theCatalogDirectoryIsMadeAndTheRankLimitReachesTheWorkers() async throws {
        let directory = try TemporaryDirectory()
        let configuration = testConfiguration(dataDir: directory.url)
        #expect(configuration.loraDirectory == directory.url.appending(path: "loras", directoryHint: .isDirectory).standardizedFileURL)
        #expect(configuration.loraMaxRank == 128)
        _ = try await buildNode(configuration: configuration, overrides: AppOverrides(worker: FakeWorker()))
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: configuration.loraDirectory.path, isDirectory: &isDirectory) && isDirectory.boolValue)
        let limited = testConfiguration(dataDir: directory.url, ["i2v.loraMaxRank": 32, "i2v.loraDir": "/srv/loras"])
        #expect(limited.loraDirectory.path == "/srv/loras")
        #expect(workerLaunch(configuration: limited, checkpoint: "/m", device: "cpu", slots: 1).environment["I2V_LORA_MAX_RANK"] == "32")
    }

    /// Old requests keep their idempotency fingerprints; LoRAs make a different request.
    @Test func theFingerprintCoversLoRAsOnlyWhenThereAreSome() {
        let plain = Submission(
            image: .url("http://x/a.png"), prompt: "a prompt long enough", model: "m", imageSize: .auto, numFrames: 81, guidanceScale: 3,
            inferSteps: 30, negativePrompt: ""
        )
        var none = plain
        none.loras = []
        #expect(none.fingerprint == plain.fingerprint)
        var styled = plain
        styled.loras = [LoRAChoice(name: "style", scale: 1)]
        var stronger = plain
        stronger.loras = [LoRAChoice(name: "style", scale: 1.5)]
        #expect(Set([plain.fingerprint, styled.fingerprint, stronger.fingerprint]).count == 3)
    }
}

/// The LoRA fields of both APIs, the listings and a task's way through the queue, with the fake worker.
@Suite struct LoRAAPITests {
    static let model = "wan2.1-i2v-14b-480p-demo"

    /// A service whose catalog holds `style` and `soft` (demo LoRAs), `wide` (a 14B model's) and `deep` (rank 16,
    /// above the limit of 8), and a file that is no LoRA.
    static func withService(
        _ worker: FakeWorker = FakeWorker(),
        _ body: @Sendable (_ client: any TestClientProtocol, _ loras: URL, _ dataDir: URL) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let loras = try LoRAFiles.catalog(
            in: directory.url,
            [
                ("style", LoRAFiles.lora()), ("deep", LoRAFiles.lora(rank: 16)), ("soft", LoRAFiles.lora(rank: 2)),
                ("wide", LoRAFiles.lora(dim: 5120, ffn: 8, dtype: "BF16")),
            ])
        try Data("not a lora".utf8).write(to: loras.appending(path: "junk.safetensors"))
        let app = try await makeTestApp(
            dataDir: directory.url, worker: worker, model: model, ["i2v.loraDir": .init(stringLiteral: loras.path), "i2v.loraMaxRank": 8]
        )
        let dataDir = directory.url
        try await app.test(.router) { client in try await body(client, loras, dataDir) }
    }

    @Test func bothListingsShowTheCatalogBehindTheKey() async throws {
        try await Self.withService { client, loras, _ in
            let native = try await client.v1(.get, "/loras")
            #expect(native.status == .ok)
            let listed = try #require(try native.jsonObject()["loras"] as? [[String: Any]])
            #expect(listed.map { $0["name"] as? String } == ["deep", "soft", "style", "wide"])
            let style = try #require(listed.first { $0["name"] as? String == "style" })
            let bytes = try Data(contentsOf: loras.appending(path: "style.safetensors"))
            #expect(style["rank"] as? Int == 4)
            #expect(style["size_bytes"] as? Int == bytes.count)
            #expect(style["sha256"] as? String == LoRAFiles.sha256(bytes))
            #expect(style["models"] as? [String] == LoRACatalogTests.demoModels)
            #expect(style["id"] == nil)
            #expect(try native.jsonObject()["urls"] as? Bool == false)

            let openAI = try await client.v1(.get, "/v1/loras")
            #expect(openAI.status == .ok)
            let page = try openAI.jsonObject()
            #expect(page["object"] as? String == "list")
            #expect(page["urls"] as? Bool == false)
            let data = try #require(page["data"] as? [[String: Any]])
            #expect(data.map { $0["id"] as? String } == ["deep", "soft", "style", "wide"])
            #expect(data.allSatisfy { $0["object"] as? String == "lora" && $0["name"] as? String == $0["id"] as? String })
            #expect(
                (data.first { $0["id"] as? String == "wide" })?["models"] as? [String] == [
                    "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.1-flf2v-14b-720p", "wan2.2-i2v-a14b",
                ])

            for path in ["/loras", "/v1/loras"] {
                #expect(try await client.execute(uri: path, method: .get).status == .unauthorized, "\(path)")
            }
        }
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var loras: String
        var type: String
        var loc: [String]
        /// The issue's message, where the case checks it.
        var message: String? = nil
        var testDescription: String { "\(loras) → \(type) at \(loc)" }
    }

    static let invalid: [Case] = [
        Case(loras: #"[{"name":"nope"}]"#, type: "value_error", loc: ["loras", "0", "name"], message: "Unknown LoRA 'nope': GET /loras lists the catalog"),
        Case(loras: #"[{"name":"style"},{"name":"style","scale":0.5}]"#, type: "value_error", loc: ["loras", "1", "name"]),
        Case(loras: #"[{"name":"style","scale":2.5}]"#, type: "less_than_equal", loc: ["loras", "0", "scale"]),
        Case(loras: #"[{"name":"soft"},{"name":"style","scale":-0.1}]"#, type: "greater_than_equal", loc: ["loras", "1", "scale"]),
        Case(loras: #"[{"name":"style","scale":"high"}]"#, type: "float_type", loc: ["loras", "0", "scale"]),
        Case(loras: #"[{"scale":1}]"#, type: "missing", loc: ["loras", "0", "name"]),
        Case(loras: #"["style"]"#, type: "dict_type", loc: ["loras", "0"]),
        Case(loras: #"{"name":"style"}"#, type: "list_type", loc: ["loras"]),
        // LoRAs by URL are off in this service (I2V_LORA_URLS).
        Case(loras: #"[{"url":"http://127.0.0.1:9/style.safetensors"}]"#, type: "value_error", loc: ["loras", "0", "url"]),
        Case(
            loras: "[" + Array(repeating: #"{"name":"style"}"#, count: 5).joined(separator: ",") + "]", type: "too_long", loc: ["loras"]
        ),
    ]

    static func submitBody(_ loras: String, imageURL: String = "http://127.0.0.1:9/image.png") -> String {
        #"{"image_url":"\#(imageURL)","prompt":"A dancing cat in the style of Van Gogh","num_frames":24,"infer_steps":20,"loras":\#(loras)}"#
    }

    @Test(arguments: invalid)
    func aBadLorasFieldIsRefusedByBothAPIsNamingIt(_ bad: Case) async throws {
        try await Self.withService { client, _, _ in
            let native = try await client.post("/video/submit", json: Self.submitBody(bad.loras))
            #expect(native.status == .unprocessableContent, "\(String(buffer: native.body))")
            let issue = try #require(native.validationIssues.first)
            #expect(issue["type"] as? String == bad.type, "\(issue)")
            #expect((issue["loc"] as? [Any])?.map { "\($0)" } == ["body"] + bad.loc, "\(issue)")
            if let message = bad.message { #expect(issue["msg"] as? String == message, "\(issue)") }

            let json = try JSONSerialization.jsonObject(with: Data(bad.loras.utf8), options: .fragmentsAllowed)
            let openAI = try await client.createVideo(json: [
                "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "http://127.0.0.1:9/image.png"], "loras": json,
            ])
            #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
            let error = try openAI.openAIError()
            #expect(error["param"] as? String == "loras", "\(error)")
            #expect(error["code"] as? String == bad.type, "\(error)")

            let form = try await client.createVideo(form: [
                .text("prompt", "A dancing cat in the style of Van Gogh"), .text("loras", bad.loras),
                .file("input_reference", fixtureImage, filename: "cat.png", contentType: "image/png"),
            ])
            #expect(form.status == .badRequest, "\(String(buffer: form.body))")
            #expect(try form.openAIError()["param"] as? String == "loras")
        }
    }

    /// What the header shows a job cannot use is a 400 naming the LoRA, before the image is fetched.
    @Test func aLoRAOfAnotherModelOrAboveTheRankLimitIs400NamingIt() async throws {
        try await Self.withService { client, _, _ in
            for (name, says) in [("wide", "does not fit \(Self.model)"), ("deep", "rank 16, above the limit of 8")] {
                let native = try await client.post("/video/submit", json: Self.submitBody(#"[{"name":"\#(name)"}]"#))
                #expect(native.status == .badRequest, "\(String(buffer: native.body))")
                #expect(native.reason().hasPrefix("LoRA \(name) ") && native.reason().contains(says), "\(native.reason())")

                let openAI = try await client.createVideo(json: [
                    "prompt": "A dancing cat in the style of Van Gogh", "input_reference": ["image_url": "http://127.0.0.1:9/image.png"],
                    "loras": [["name": name]],
                ])
                #expect(openAI.status == .badRequest)
                let error = try openAI.openAIError()
                #expect(error["param"] as? String == "loras" && (error["message"] as? String)?.contains(says) == true, "\(error)")
            }
            let form = try await client.createVideo(form: [
                .text("prompt", "A dancing cat in the style of Van Gogh"), .text("loras", "[{\"name\": oops"),
                .file("input_reference", fixtureImage, filename: "cat.png", contentType: "image/png"),
            ])
            #expect(form.status == .badRequest)
            #expect(try form.openAIError()["code"] as? String == "invalid_json")
        }
    }

    /// The SDKs flatten a list of objects in a form (`loras[0][name]`, `loras[0][scale]`): those fields are the
    /// same list, checked the same way, and a field of another shape is refused rather than dropped.
    @Test func flattenedFormFieldsAreTheLoRAList() async throws {
        let worker = FakeWorker()
        try await withImageServer { base in
            try await Self.withService(worker) { client, _, _ in
                func create(_ fields: [(String, String)]) async throws -> TestResponse {
                    try await client.createVideo(
                        form: [
                            .text("prompt", "A dancing cat in the style of Van Gogh"), .text("input_reference[image_url]", "\(base)/image.png"),
                        ] + fields.map { .text($0.0, $0.1) })
                }
                let created = try await create([("loras[0][name]", "style"), ("loras[0][scale]", "0.5"), ("loras[1][name]", "soft")])
                #expect(created.status == .ok, "\(String(buffer: created.body))")
                let id = try #require(try created.jsonObject()["id"] as? String)
                let done = try await client.waitFor(String(id.dropFirst("video_".count)), status: "Succeed")
                let reported = (done["results"] as? [String: Any])?["loras"] as? [[String: Any]]
                #expect(reported?.map { "\($0["name"] ?? "")@\($0["scale"] ?? "")" } == ["style@0.5", "soft@1"], "\(done)")

                // As the OpenAI SDK flattens them: no index, key by key (the n-th of each key is the n-th LoRA's).
                let sdk = try await create([("loras[][name]", "soft"), ("loras[][name]", "style"), ("loras[][scale]", "2"), ("loras[][scale]", "1")])
                #expect(sdk.status == .ok, "\(String(buffer: sdk.body))")
                let sdkID = try #require(try sdk.jsonObject()["id"] as? String)
                let sdkDone = try await client.waitFor(String(sdkID.dropFirst("video_".count)), status: "Succeed")
                let sdkLoRAs = (sdkDone["results"] as? [String: Any])?["loras"] as? [[String: Any]]
                #expect(sdkLoRAs?.map { "\($0["name"] ?? "")@\($0["scale"] ?? "")" } == ["soft@2", "style@1"], "\(sdkDone)")

                for fields in [
                    [("loras[0][weight]", "1")], [("loras[1][name]", "style")], [("loras[0][name]", "nope")],
                    [("loras[][name]", "style"), ("loras[1][name]", "soft")], [("loras[][name]", "style"), ("loras[][scale]", "1"), ("loras[][scale]", "1")],
                ] {
                    let refused = try await create(fields)
                    #expect(refused.status == .badRequest, "\(fields): \(String(buffer: refused.body))")
                    #expect(try refused.openAIError()["param"] as? String == "loras")
                }
            }
        }
    }

    /// The task keeps the LoRAs with their SHA-256, the worker gets each file's path, and both APIs report
    /// them; an empty list is none.
    @Test func aTaskRunsWithItsLoRAsAndBothAPIsReportThem() async throws {
        let worker = FakeWorker()
        try await withImageServer { base in
            try await Self.withService(worker) { client, loras, _ in
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style","scale":0.5},{"name":"soft","scale":0}]"#)
                let done = try await client.waitFor(id, status: "Succeed")
                let results = try #require(done["results"] as? [String: Any], "\(done)")
                let style = LoRAFiles.sha256(try Data(contentsOf: loras.appending(path: "style.safetensors")))
                let soft = LoRAFiles.sha256(try Data(contentsOf: loras.appending(path: "soft.safetensors")))
                let reported = try #require(results["loras"] as? [[String: Any]])
                #expect(reported.map { $0["name"] as? String } == ["style", "soft"])
                #expect(reported.map { $0["scale"] as? Double } == [0.5, 0])
                #expect(reported.map { $0["sha256"] as? String } == [style, soft])

                let job = try #require(await worker.jobs.first { $0.taskID == id })
                #expect(
                    job.loras == [
                        WorkerLoRA(name: "style", path: loras.appending(path: "style.safetensors").path, scale: 0.5, sha256: style),
                        WorkerLoRA(name: "soft", path: loras.appending(path: "soft.safetensors").path, scale: 0, sha256: soft),
                    ])
                let video = try await client.v1(.get, "/v1/videos/video_\(id)").jsonObject()
                #expect((video["loras"] as? [[String: Any]])?.map { $0["name"] as? String } == ["style", "soft"])

                let plain = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[]"#)
                let plainDone = try await client.waitFor(plain, status: "Succeed")
                #expect((plainDone["results"] as? [String: Any])?["loras"] == nil, "\(plainDone)")
                #expect(try #require(await worker.jobs.first { $0.taskID == plain }).loras == nil)
                #expect(try await client.v1(.get, "/v1/videos/video_\(plain)").jsonObject()["loras"] == nil)
            }
        }
    }

    /// A LoRA file replaced or removed while its task waited fails the task with the reason, before the
    /// worker is asked; the worker's own refusal (`bad_input`) fails it too, and the worker goes on.
    @Test func aLoRAChangedWhileQueuedOrRefusedByTheWorkerFailsTheTask() async throws {
        let worker = FakeWorker(ready: false)
        try await withImageServer { base in
            try await Self.withService(worker) { client, loras, _ in
                let changed = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style"}]"#)
                let removed = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"soft"}]"#)
                let file = loras.appending(path: "style.safetensors")
                try LoRAFiles.lora(rank: 2).write(to: file)
                try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: file.path)
                try FileManager.default.removeItem(at: loras.appending(path: "soft.safetensors"))
                await worker.setReady(true)
                let failed = try await client.waitFor(changed, status: "Failed")
                #expect(failed["status"] as? String == "Failed")
                #expect((failed["reason"] as? String)?.contains("LoRA style changed since the task was submitted") == true, "\(failed)")
                let gone = try await client.waitFor(removed, status: "Failed")
                #expect((gone["reason"] as? String)?.contains("LoRA soft is no longer in the LoRA catalog") == true, "\(gone)")
                #expect(await worker.started.isEmpty, "neither reached the worker")

                await worker.setFailure(.badInput, "LoRA style: sha256 of /x is 00, not 11")
                let refused = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style"}]"#)
                let refusal = try await client.waitFor(refused, status: "Failed")
                #expect(refusal["reason"] as? String == "bad input: LoRA style: sha256 of /x is 00, not 11", "\(refusal)")
                await worker.clearFailure()
                let next = try await client.submit(imageURL: "\(base)/image.png")
                #expect(try await client.waitFor(next, status: "Succeed")["status"] as? String == "Succeed")
            }
        }
    }
}

/// One run through the real worker: a demo LoRA the worker's own builder writes into the catalog, listed, sent
/// with a job, and a job without it at the same seed; both succeed, only the first reports it, and it changes
/// the video.
@Suite(
    .serialized,
    .enabled(
        if: EndToEnd.python != nil || ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1",
        "needs the worker's Python environment (make python-env) and ffprobe"))
struct LoRAEndToEndTests {
    @Test func aJobWithADemoLoRAMakesADifferentVideoThanOneWithout() async throws {
        let python = try #require(EndToEnd.python, "the worker's Python environment or ffprobe is missing (make python-env)")
        let catalog = try TemporaryDirectory()
        let file = catalog.url.appending(path: "style.safetensors")
        let (_, status) = try await runTool(
            python, ["-m", "i2v_worker.demo", "--style-lora", file.path],
            environment: ["PYTHONPATH": repositoryRoot.appending(path: "worker").path]
        )
        try #require(status == 0, "writing the demo LoRA exited with \(status)")
        let sha256 = LoRAFiles.sha256(try Data(contentsOf: file))
        try await EndToEnd.withService(["i2v.loraDir": .init(stringLiteral: catalog.url.path), "i2v.maxConcurrent": 2]) { client, dataDir, imageBase in
            let listed = try await client.v1(.get, "/loras").jsonObject()["loras"] as? [[String: Any]]
            #expect(listed?.map { $0["name"] as? String } == ["style"], "\(String(describing: listed))")
            #expect(listed?.first?["sha256"] as? String == sha256)

            let image = "\(imageBase)/image.png"
            let styled = try await client.submit(imageURL: image, extra: #","seed":11,"loras":[{"name":"style","scale":1.5}]"#, frames: 24)
            let plain = try await client.submit(imageURL: image, extra: #","seed":11"#, frames: 24)
            var videos: [Data] = []
            for id in [styled, plain] {
                let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(180))
                try #require(done["status"] as? String == "Succeed", "\(done)")
                let results = try #require(done["results"] as? [String: Any])
                let url = try #require(((results["videos"] as? [[String: Any]])?.first?["url"]) as? String)
                videos.append(try Data(contentsOf: dataDir.appending(path: "videos").appending(path: String(url.split(separator: "/").last ?? ""))))
                let loras = results["loras"] as? [[String: Any]]
                if id == styled {
                    #expect(loras?.count == 1, "\(results)")
                    #expect(loras?.first?["name"] as? String == "style" && loras?.first?["scale"] as? Double == 1.5)
                    #expect(loras?.first?["sha256"] as? String == sha256)
                } else {
                    #expect(loras == nil, "\(results)")
                }
            }
            #expect(!videos[0].isEmpty && !videos[1].isEmpty)
            #expect(videos[0] != videos[1], "the LoRA changed nothing")
        }
    }
}
