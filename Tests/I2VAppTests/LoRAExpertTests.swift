import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VHTTP

/// What a LoRA's `expert` keeps as it was before LoRAs could name one: the stored JSON, the set key and the
/// idempotency fingerprint of a LoRA for both experts.
@Suite struct LoRAExpertStorageTests {
    @Test func aLoRAForBothExpertsIsStoredKeyedAndFingerprintedAsBefore() throws {
        let both = TaskLoRA(name: "a", scale: 1, sha256: "AA")
        let stored = try #require(TaskLoRA.stored([both]))
        let fields = try #require(try JSONSerialization.jsonObject(with: Data(stored.utf8)) as? [[String: Any]])
        #expect(fields.map { Set($0.keys) } == [["name", "scale", "sha256"]], "\(stored)")
        // A row written before experts existed reads back as a LoRA for both.
        #expect(TaskLoRA.fromStored(#"[{"name":"a","scale":1,"sha256":"AA"}]"#) == [both])
        #expect(TaskLoRA.setKey([both]) == "aa@1.0")

        let high = TaskLoRA(name: "a", scale: 1, sha256: "AA", expert: .highNoise)
        let low = TaskLoRA(name: "a", scale: 1, sha256: "AA", expert: .lowNoise)
        let pair = try #require(TaskLoRA.stored([high, low]))
        #expect(pair.contains(#""expert":"high_noise""#) && pair.contains(#""expert":"low_noise""#), "\(pair)")
        #expect(TaskLoRA.fromStored(pair) == [high, low])
        // A-on-high and A-on-both are different sets; the pair is one set in either order.
        #expect(Set([TaskLoRA.setKey([high]), TaskLoRA.setKey([both]), TaskLoRA.setKey([low])]).count == 3)
        #expect(TaskLoRA.setKey([high, low]) == TaskLoRA.setKey([low, high]))

        #expect(String(reflecting: LoRAChoice(name: "style", scale: 1)) == #"I2VCore.LoRAChoice(name: "style", scale: 1.0)"#)
        let plain = Submission(
            image: .url("http://x/a.png"), prompt: "a prompt long enough", model: "m", imageSize: .auto, numFrames: 81, guidanceScale: 3,
            inferSteps: 30, negativePrompt: ""
        )
        var forBoth = plain
        forBoth.loras = [LoRAChoice(name: "style", scale: 1)]
        var forHigh = plain
        forHigh.loras = [LoRAChoice(name: "style", scale: 1, expert: .highNoise)]
        #expect(forBoth.fingerprint != forHigh.fingerprint)
    }
}

/// LoRAs on one expert of a two-expert model (the Wan2.2 A14B demo), with the fake worker: both APIs take
/// them, pair the same LoRA across the two experts, sum ranks per expert, and report the expert; a model with
/// one transformer refuses them.
@Suite struct LoRAExpertAPITests {
    static let model = "wan2.2-i2v-a14b-demo"
    static let prompt = "A dancing cat in the style of Van Gogh"

    /// A two-expert service whose catalog holds `style` (rank 4), `twin` (the same file), `soft` (rank 2)
    /// and `big` (rank 6), under a rank limit of 8.
    static func withService(
        _ worker: FakeWorker = FakeWorker(),
        _ body: @Sendable (_ client: any TestClientProtocol, _ loras: URL) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let loras = try LoRAFiles.catalog(
            in: directory.url, [("style", LoRAFiles.lora()), ("twin", LoRAFiles.lora()), ("soft", LoRAFiles.lora(rank: 2)), ("big", LoRAFiles.lora(rank: 6))])
        let app = try await makeTestApp(
            dataDir: directory.url, worker: worker, model: model, experts: 2,
            ["i2v.loraDir": .init(stringLiteral: loras.path), "i2v.loraMaxRank": 8]
        )
        try await app.test(.router) { client in try await body(client, loras) }
    }

    static func reported(_ loras: Any?) -> [String] {
        ((loras as? [[String: Any]]) ?? []).map { "\($0["name"] ?? "")@\($0["scale"] ?? ""):\($0["expert"] ?? "both")" }
    }

    /// A high-noise file and a low-noise file, and one file on each single expert: queued, run and reported
    /// with their experts by both APIs; a LoRA for both reports none.
    @Test func loRAsForSingleExpertsRunAndAreReported() async throws {
        let worker = FakeWorker()
        try await withImageServer { base in
            try await Self.withService(worker) { client, loras in
                let pair = try await client.submit(
                    imageURL: "\(base)/image.png",
                    extra: #","loras":[{"name":"style","expert":"high_noise"},{"name":"big","scale":0.5,"expert":"low_noise"},{"name":"soft","expert":"both"}]"#
                )
                let done = try await client.waitFor(pair, status: "Succeed")
                let results = try #require(done["results"] as? [String: Any], "\(done)")
                #expect(Self.reported(results["loras"]) == ["style@1:high_noise", "big@0.5:low_noise", "soft@1:both"], "\(results)")
                #expect(((results["loras"] as? [[String: Any]])?.last)?.keys.contains("expert") == false)
                let video = try await client.v1(.get, "/v1/videos/video_\(pair)").jsonObject()
                #expect(Self.reported(video["loras"]) == ["style@1:high_noise", "big@0.5:low_noise", "soft@1:both"], "\(video)")
                let job = try #require(await worker.jobs.first { $0.taskID == pair })
                #expect(job.loras?.map(\.name) == ["style", "big", "soft"])
                // The run message carries each single expert, and nothing for both.
                #expect(job.loras?.map(\.expert) == [.highNoise, .lowNoise, nil])
                #expect(job.loras?.first?.path == loras.appending(path: "style.safetensors").path)

                // One file on each single expert, at its own scale, through the OpenAI-style API.
                let created = try await client.createVideo(json: [
                    "prompt": Self.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                    "loras": [["name": "style", "scale": 0.8, "expert": "high_noise"], ["name": "style", "scale": 1.2, "expert": "low_noise"]],
                ])
                #expect(created.status == .ok, "\(String(buffer: created.body))")
                let id = String(try #require(try created.jsonObject()["id"] as? String).dropFirst("video_".count))
                let same = try await client.waitFor(id, status: "Succeed")
                let sameLoRAs = (same["results"] as? [String: Any])?["loras"]
                #expect(Self.reported(sameLoRAs) == ["style@0.8:high_noise", "style@1.2:low_noise"], "\(same)")
                // The same file under another name counts as the same file, and may pair too.
                let twins = try await client.submit(
                    imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style","expert":"high_noise"},{"name":"twin","expert":"low_noise"}]"#
                )
                #expect(try await client.waitFor(twins, status: "Succeed")["status"] as? String == "Succeed")
            }
        }
    }

    /// The OpenAI SDK flattens `expert` like the other keys; numbered fields carry it too.
    @Test func flattenedFormFieldsCarryTheExpert() async throws {
        try await withImageServer { base in
            try await Self.withService { client, _ in
                func create(_ fields: [(String, String)]) async throws -> [String: Any] {
                    let created = try await client.createVideo(
                        form: [.text("prompt", Self.prompt), .text("input_reference[image_url]", "\(base)/image.png")] + fields.map { .text($0.0, $0.1) })
                    try #require(created.status == .ok, "\(fields): \(String(buffer: created.body))")
                    let id = try #require(try created.jsonObject()["id"] as? String)
                    return try await client.waitFor(String(id.dropFirst("video_".count)), status: "Succeed")
                }
                let sdk = try await create([
                    ("loras[][name]", "style"), ("loras[][name]", "style"), ("loras[][scale]", "1"), ("loras[][scale]", "0.5"),
                    ("loras[][expert]", "high_noise"), ("loras[][expert]", "low_noise"),
                ])
                #expect(Self.reported((sdk["results"] as? [String: Any])?["loras"]) == ["style@1:high_noise", "style@0.5:low_noise"], "\(sdk)")
                let numbered = try await create([
                    ("loras[0][name]", "soft"), ("loras[1][name]", "style"), ("loras[1][expert]", "low_noise"),
                ])
                #expect(Self.reported((numbered["results"] as? [String: Any])?["loras"]) == ["soft@1:both", "style@1:low_noise"], "\(numbered)")

                let refused = try await client.createVideo(
                    form: [
                        .text("prompt", Self.prompt), .text("input_reference[image_url]", "\(base)/image.png"), .text("loras[0][name]", "style"),
                        .text("loras[0][expert]", "middle"),
                    ])
                #expect(refused.status == .badRequest, "\(String(buffer: refused.body))")
                #expect(try refused.openAIError()["param"] as? String == "loras")
            }
        }
    }

    typealias Case = LoRAAPITests.Case

    static let invalid: [Case] = [
        Case(loras: #"[{"name":"style","expert":"middle"}]"#, type: "literal_error", loc: ["loras", "0", "expert"]),
        Case(loras: #"[{"name":"style","expert":1}]"#, type: "literal_error", loc: ["loras", "0", "expert"]),
        Case(loras: #"[{"name":"style","expert":"high_noise"},{"name":"style","expert":"high_noise"}]"#, type: "value_error", loc: ["loras", "1", "name"]),
        Case(loras: #"[{"name":"style"},{"name":"style","expert":"low_noise"}]"#, type: "value_error", loc: ["loras", "1", "name"]),
        Case(loras: #"[{"name":"style","expert":"high_noise"},{"name":"style","expert":"both"}]"#, type: "value_error", loc: ["loras", "1", "name"]),
    ]

    /// An unknown expert, and the same LoRA twice on an expert, are refused by both APIs naming the item.
    @Test(arguments: invalid)
    func aBadExpertOrAnOverlappingDuplicateIsRefused(_ bad: Case) async throws {
        try await Self.withService { client, _ in
            let native = try await client.post("/video/submit", json: LoRAAPITests.submitBody(bad.loras))
            #expect(native.status == .unprocessableContent, "\(String(buffer: native.body))")
            let issue = try #require(native.validationIssues.first)
            #expect(issue["type"] as? String == bad.type, "\(issue)")
            #expect((issue["loc"] as? [Any])?.map { "\($0)" } == ["body"] + bad.loc, "\(issue)")

            let json = try JSONSerialization.jsonObject(with: Data(bad.loras.utf8))
            let openAI = try await client.createVideo(json: [
                "prompt": Self.prompt, "input_reference": ["image_url": "http://127.0.0.1:9/image.png"], "loras": json,
            ])
            #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
            #expect(try openAI.openAIError()["param"] as? String == "loras")
        }
    }

    /// Each expert holds an adapter of the limit's rank: the ranks on it (its own LoRAs and those for both)
    /// may add up to the limit, whatever the other expert holds; past it is a 400 naming the expert. The same
    /// file under another name on an expert it already has is refused, like a name given twice.
    @Test func ranksAddUpPerExpertAndOneFileGoesOnceOnAnExpert() async throws {
        try await withImageServer { base in
            try await Self.withService { client, _ in
                // high: big 6 + soft 2 = 8, low: style 4 + soft 2 = 6 (12 together, above one adapter's 8).
                let fits = try await client.submit(
                    imageURL: "\(base)/image.png",
                    extra: #","loras":[{"name":"big","expert":"high_noise"},{"name":"style","expert":"low_noise"},{"name":"soft"}]"#
                )
                #expect(try await client.waitFor(fits, status: "Succeed")["status"] as? String == "Succeed")

                let above = #"[{"name":"big","expert":"low_noise"},{"name":"style"}]"#
                let native = try await client.post("/video/submit", json: LoRAAPITests.submitBody(above, imageURL: "\(base)/image.png"))
                #expect(native.status == .badRequest, "\(String(buffer: native.body))")
                #expect(native.reason().contains("low_noise expert") && native.reason().contains("add up to 10, above the limit of 8"), "\(native.reason())")
                let openAI = try await client.createVideo(json: [
                    "prompt": Self.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                    "loras": [["name": "big", "expert": "low_noise"], ["name": "style"]],
                ])
                #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
                let error = try openAI.openAIError()
                #expect(error["param"] as? String == "loras" && error["code"] as? String == "unusable_lora", "\(error)")

                let twins = #"[{"name":"style","expert":"high_noise"},{"name":"twin"}]"#
                let twice = try await client.post("/video/submit", json: LoRAAPITests.submitBody(twins, imageURL: "\(base)/image.png"))
                #expect(twice.status == .badRequest, "\(String(buffer: twice.body))")
                #expect(twice.reason().hasPrefix("LoRA twin is the same file as LoRA style"), "\(twice.reason())")
            }
        }
    }

    /// A model with one transformer has no expert to name: `high_noise` is refused by both APIs, naming the
    /// field; `both` is the same as leaving it out.
    @Test func aModelWithOneTransformerRefusesAnExpert() async throws {
        try await withImageServer { base in
            try await LoRAAPITests.withService { client, _, _ in
                let native = try await client.post("/video/submit", json: LoRAAPITests.submitBody(#"[{"name":"style","expert":"high_noise"}]"#))
                #expect(native.status == .unprocessableContent, "\(String(buffer: native.body))")
                let issue = try #require(native.validationIssues.first)
                #expect(issue["type"] as? String == "value_error", "\(issue)")
                #expect((issue["loc"] as? [Any])?.map { "\($0)" } == ["body", "loras", "0", "expert"], "\(issue)")
                #expect((issue["msg"] as? String)?.contains("one transformer") == true, "\(issue)")

                let openAI = try await client.createVideo(json: [
                    "prompt": Self.prompt, "input_reference": ["image_url": "http://127.0.0.1:9/image.png"],
                    "loras": [["name": "style", "expert": "low_noise"]],
                ])
                #expect(openAI.status == .badRequest, "\(String(buffer: openAI.body))")
                #expect(try openAI.openAIError()["param"] as? String == "loras")

                let both = try await client.submit(imageURL: "\(base)/image.png", extra: #","loras":[{"name":"style","expert":"both"}]"#)
                let done = try await client.waitFor(both, status: "Succeed")
                #expect(Self.reported((done["results"] as? [String: Any])?["loras"]) == ["style@1:both"], "\(done)")
            }
        }
    }
}
