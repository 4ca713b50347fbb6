import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import I2VTestSupport
import Testing

@testable import I2VApp
@testable import I2VCore

/// Every demo architecture through the whole service: `I2V_MODEL` alone picks it (the server builds its demo
/// checkpoint), `/models` says what it takes, and its videos have its own frame rate, size and length. The
/// first-and-last-frame paths run for real: FLF2V, which needs a last frame, and the Wan2.2 A14B, which takes
/// one, with its two experts.
@Suite(
    .serialized,
    .enabled(
        if: EndToEnd.python != nil || ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1",
        "needs the worker's Python environment (make python-env) and ffprobe"))
struct ModelEndToEndTests {
    /// A different picture from the first frame, for the last one.
    static let lastFrame: [UInt8] = PNG.rgb(width: 320, height: 180) { x, y in [UInt8(y % 256), UInt8((x * 3) % 256), 200] }.bytes

    static func withModel(
        _ model: String, device: String = "cpu", _ values: [String: ConfigValue] = [:],
        _ body: @Sendable (_ client: any TestClientProtocol, _ dataDir: URL, _ imageBase: String) async throws -> Void
    ) async throws {
        let python = try #require(EndToEnd.python, "the worker's Python environment or ffprobe is missing (make python-env)")
        let directory = try TemporaryDirectory()
        let app = try await buildApplication(
            configuration: testConfiguration(
                dataDir: directory.url,
                ([
                    "i2v.python": .init(stringLiteral: python),
                    "i2v.model": .init(stringLiteral: model),
                    "i2v.devices": .init(stringLiteral: device),
                ] as [String: ConfigValue]).merging(values) { _, given in given }))
        let dataDir = directory.url
        try await withImageServer({ router in
            router.get("last.png") { _, _ in
                Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: Self.lastFrame)))
            }
        }) { base in
            try await app.test(.live) { client in
                try await EndToEnd.waitUntilReady(client)
                try await body(client, dataDir, base)
            }
        }
    }

    /// The finished task's video, probed, and its bytes.
    static func video(_ done: [String: Any], dataDir: URL) async throws -> (probe: EndToEnd.Probe, bytes: Data) {
        let results = try #require(done["results"] as? [String: Any], "\(done)")
        let url = try #require(((results["videos"] as? [[String: Any]])?.first?["url"]) as? String)
        let file = dataDir.appending(path: "videos").appending(path: String(url.split(separator: "/").last ?? ""))
        return (try await EndToEnd.ffprobe(file), try Data(contentsOf: file))
    }

    static func listed(_ client: some TestClientProtocol, _ model: String) async throws -> [String: Any] {
        let models = try await client.execute(uri: "/models", method: .get).jsonObject()["models"] as? [[String: Any]]
        return try #require(models?.first { $0["id"] as? String == model }, "\(String(describing: models))")
    }

    /// `cpu+cpu,cpu` is a node with two workers: a group whose two processes make each video together
    /// (context parallelism over gloo) and one plain process. The server runs the group as one worker of one
    /// slot, `/ready` shows it, the same job and seed make the same frames on either, and a group that loses a
    /// rank is restarted whole with its job re-queued, while the other worker's job goes on.
    @Test func aGroupAndAPlainDeviceOnOneNodeMakeTheSameVideo() async throws {
        let model = "wan2.1-i2v-14b-480p-demo"
        try await Self.withModel(model, device: "cpu+cpu,cpu") { client, dataDir, base in
            // The plain worker may be ready first; wait for both.
            var workers: [[String: Any]] = []
            let bothReady = await eventually("both workers ready") {
                let ready = (try? await client.execute(uri: "/ready", method: .get).jsonObject()) ?? [:]
                workers = ready["workers"] as? [[String: Any]] ?? []
                return workers.count == 2 && workers.allSatisfy { $0["state"] as? String == "ready" } && ready["slots"] as? Int == 2
            }
            try #require(bothReady, "\(workers)")
            #expect(workers.map { $0["device"] as? String } == ["cpu+cpu", "cpu"], "\(workers)")

            let first = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":5"#, frames: 24)
            let second = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":5"#, frames: 24)
            // Which worker ran which task, seen on /ready while they run.
            var ranOn: [String: String] = [:]
            var statuses: [String] = []
            let finished = await eventually("both tasks finished", timeout: .seconds(300)) {
                let ready = (try? await client.execute(uri: "/ready", method: .get).jsonObject()) ?? [:]
                for worker in ready["workers"] as? [[String: Any]] ?? [] {
                    for task in worker["tasks"] as? [String] ?? [] { ranOn[task] = worker["device"] as? String }
                }
                statuses = [(try? await client.status(first))?["status"] as? String ?? "", (try? await client.status(second))?["status"] as? String ?? ""]
                return statuses.allSatisfy { $0 == "Succeed" || $0 == "Failed" }
            }
            try #require(finished && statuses == ["Succeed", "Succeed"], "\(statuses)")
            #expect(Set(ranOn.values) == ["cpu+cpu", "cpu"], "each worker ran one of the two: \(ranOn)")

            var frames: [Data] = []
            for id in [first, second] {
                let done = try await client.status(id)
                let (probe, _) = try await Self.video(done, dataDir: dataDir)
                #expect(probe.frames == 25 && probe.fps == "16/1", "\(probe)")
                let url = try #require(((done["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"] as? String)
                let file = dataDir.appending(path: "videos").appending(path: String(url.split(separator: "/").last ?? ""))
                let (raw, status) = try await runTool("/usr/bin/ffmpeg", ["-v", "error", "-i", file.path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
                #expect(status == 0)
                frames.append(raw)
            }
            try #require(frames[0].count == frames[1].count && !frames[0].isEmpty)
            // float32 frames agree to 1e-5 between a group and one process; after 8-bit rounding and H.264 at most
            // a level or two may differ where a value sat on a rounding edge.
            let largest = zip(frames[0], frames[1]).reduce(0) { max($0, abs(Int($1.0) - Int($1.1))) }
            #expect(largest <= 2, "largest difference between the group's and the plain worker's frames: \(largest)")

            // Rank 1 killed mid-job: the whole group is restarted and its job re-queued and done; the plain
            // worker's job beside it is not touched.
            let long = #","seed":9,"infer_steps":40"#
            let onGroup = try await client.submit(imageURL: "\(base)/image.png", extra: long, frames: 24)
            let beside = try await client.submit(imageURL: "\(base)/image.png", extra: long, frames: 24)
            var group: [String: Any] = [:]
            let running = await eventually("a job running on the group") {
                let ready = (try? await client.execute(uri: "/ready", method: .get).jsonObject()) ?? [:]
                group = (ready["workers"] as? [[String: Any]])?.first { $0["device"] as? String == "cpu+cpu" } ?? [:]
                guard let task = (group["tasks"] as? [String])?.first else { return false }
                return EndToEnd.step((try? await client.status(task)) ?? [:]) >= 1
            }
            try #require(running, "\(group)")
            let groupTask = try #require((group["tasks"] as? [String])?.first)
            let plainTask = groupTask == onGroup ? beside : onGroup
            let rank0 = try #require(group["pid"] as? Int)
            let children = try String(contentsOfFile: "/proc/\(rank0)/task/\(rank0)/children", encoding: .utf8)
            let rank1 = try #require(children.split(separator: " ").compactMap { Int32($0) }.first, "rank 0 (pid \(rank0)) has no child")
            #expect(kill(rank1, SIGKILL) == 0)
            let redone = try await client.waitFor(groupTask, status: "Succeed", timeout: .seconds(300))
            #expect(redone["status"] as? String == "Succeed", "\(redone)")
            #expect(try await client.waitFor(plainTask, status: "Succeed", timeout: .seconds(300))["status"] as? String == "Succeed")
            let after = try await client.execute(uri: "/ready", method: .get).jsonObject()["workers"] as? [[String: Any]] ?? []
            #expect(after.map { $0["restarts"] as? Int } == [1, 0], "\(after)")
        }
    }

    @Test func ti2v5bMakesItsOwnFrameRateAndRefusesALastFrame() async throws {
        let model = "wan2.2-ti2v-5b-demo"
        try await Self.withModel(model) { client, dataDir, base in
            let listed = try await Self.listed(client, model)
            #expect(listed["fps"] as? Int == 24 && listed["size_multiple"] as? Int == 32 && listed["last_image"] as? String == "none")
            let size = try #require((listed["sizes"] as? [String])?.first)
            // Its own trained size is taken as image_size, and comes back as the video's.
            let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","image_size":"\#(size)","seed":3"#, frames: 24)
            let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))
            let results = try #require(done["results"] as? [String: Any], "\(done)")
            #expect(results["model"] as? String == model && results["fps"] as? Int == 24)
            #expect("\(results["width"] ?? "")x\(results["height"] ?? "")" == size)
            let (probe, _) = try await Self.video(done, dataDir: dataDir)
            #expect(probe.fps == "24/1" && probe.frames == 25)
            #expect("\(probe.width ?? 0)x\(probe.height ?? 0)" == size)

            // A last frame for a model that takes a first one only: 422 naming the field and the model.
            let refused = try await client.post(
                "/video/submit",
                json: #"{"image_url":"\#(base)/image.png","last_image_url":"\#(base)/last.png","prompt":"A dancing cat in the style of Van Gogh"}"#
            )
            #expect(refused.status == .unprocessableContent)
            #expect(String(buffer: refused.body).contains("last_image_url") && String(buffer: refused.body).contains(model))
            // A size it does not take: 422 listing those it does.
            let badSize = try await client.post(
                "/video/submit", json: #"{"image_url":"\#(base)/image.png","image_size":"640x640","prompt":"A dancing cat in the style of Van Gogh"}"#
            )
            #expect(badSize.status == .unprocessableContent && String(buffer: badSize.body).contains(size))
            // One transformer: no second expert to guide.
            #expect(listed["experts"] as? Int == 1)
            let second = try await client.post(
                "/video/submit", json: #"{"image_url":"\#(base)/image.png","guidance_scale_2":4,"prompt":"A dancing cat in the style of Van Gogh"}"#
            )
            #expect(second.status == .unprocessableContent && String(buffer: second.body).contains("guidance_scale_2"))
        }
    }

    @Test func flf2vNeedsALastFrameAndEndsOnIt() async throws {
        let model = "wan2.1-flf2v-14b-720p-demo"
        try await Self.withModel(model) { client, dataDir, base in
            #expect(try await Self.listed(client, model)["last_image"] as? String == "required")
            let missing = try await client.post(
                "/video/submit", json: #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh"}"#
            )
            #expect(missing.status == .unprocessableContent && String(buffer: missing.body).contains("last_image_url"))
            // A last frame that cannot be fetched: 400 naming it, nothing queued.
            let unreachable = try await client.post(
                "/video/submit",
                json: #"{"image_url":"\#(base)/image.png","last_image_url":"\#(base)/missing.png","prompt":"A dancing cat in the style of Van Gogh"}"#
            )
            #expect(unreachable.status == .badRequest && unreachable.reason().contains("last_image_url"), "\(String(buffer: unreachable.body))")

            let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","last_image_url":"\#(base)/last.png","seed":5"#, frames: 24)
            let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))
            let (probe, _) = try await Self.video(done, dataDir: dataDir)
            #expect(probe.frames == 25 && probe.fps == "16/1")
            // Both inputs are gone with the task's end; nothing is left in the inputs folder.
            let inputs = try FileManager.default.contentsOfDirectory(atPath: dataDir.appending(path: "inputs").path)
            #expect(inputs.isEmpty, "\(inputs)")
        }
    }

    /// The A14B takes a last frame as an option: the same job and seed with and without one make different
    /// videos; through the OpenAI-style API the last frame is its `last_image` extension.
    @Test func a14bWithAndWithoutALastFrameThroughBothAPIs() async throws {
        let model = "wan2.2-i2v-a14b-demo"
        try await Self.withModel(model) { client, dataDir, base in
            #expect(try await Self.listed(client, model)["last_image"] as? String == "optional")
            let plain = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":11"#, frames: 24)
            let ending = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":11,"last_image_url":"\#(base)/last.png""#, frames: 24)
            let plainDone = try await client.waitFor(plain, status: "Succeed", timeout: .seconds(300))
            let endingDone = try await client.waitFor(ending, status: "Succeed", timeout: .seconds(300))
            let (plainProbe, plainBytes) = try await Self.video(plainDone, dataDir: dataDir)
            let (endingProbe, endingBytes) = try await Self.video(endingDone, dataDir: dataDir)
            #expect(plainProbe.frames == 25 && endingProbe.frames == 25)
            #expect(plainBytes != endingBytes, "the last frame changed nothing")

            let created = try await client.createVideo(json: [
                "prompt": "A dancing cat in the style of Van Gogh", "model": model, "num_frames": 24, "seed": 11, "num_inference_steps": 20,
                "input_reference": ["image_url": "\(base)/image.png"], "last_image": ["image_url": "\(base)/last.png"],
            ])
            #expect(created.status == .ok, "\(String(buffer: created.body))")
            let videoID = try #require(try created.jsonObject()["id"] as? String)
            let done = try await client.waitFor(String(videoID.dropFirst("video_".count)), status: "Succeed", timeout: .seconds(300))
            let (_, openAIBytes) = try await Self.video(done, dataDir: dataDir)
            // Same job, seed and frames through the other API: the same video.
            #expect(openAIBytes == endingBytes)

            // The low-noise expert's own guidance: reported back, and it changes the video.
            #expect(try await Self.listed(client, model)["experts"] as? Int == 2)
            let guided = try await client.submit(
                imageURL: "\(base)/image.png", extra: #","seed":11,"last_image_url":"\#(base)/last.png","guidance_scale_2":6.5"#, frames: 24
            )
            let guidedDone = try await client.waitFor(guided, status: "Succeed", timeout: .seconds(300))
            #expect((guidedDone["results"] as? [String: Any])?["guidance_scale_2"] as? Double == 6.5, "\(guidedDone)")
            #expect((endingDone["results"] as? [String: Any])?["guidance_scale_2"] == nil)
            let (_, guidedBytes) = try await Self.video(guidedDone, dataDir: dataDir)
            #expect(guidedBytes != endingBytes, "guidance_scale_2 changed nothing")
        }
    }

    /// A LoRA for the high-noise expert only, as A14B LoRAs are published (one file per expert): the worker
    /// takes it, the job succeeds, and the results say which expert it was on.
    @Test func a14bRunsALoRAOnTheHighNoiseExpertOnly() async throws {
        let python = try #require(EndToEnd.python, "the worker's Python environment or ffprobe is missing (make python-env)")
        let catalog = try TemporaryDirectory()
        let (_, status) = try await runTool(
            python, ["-m", "i2v_worker.demo", "--style-lora", catalog.url.appending(path: "style.safetensors").path],
            environment: ["PYTHONPATH": repositoryRoot.appending(path: "worker").path]
        )
        try #require(status == 0, "writing the demo LoRA exited with \(status)")
        let model = "wan2.2-i2v-a14b-demo"
        try await Self.withModel(model, ["i2v.loraDir": .init(stringLiteral: catalog.url.path)]) { client, _, base in
            let id = try await client.submit(
                imageURL: "\(base)/image.png", extra: #","seed":11,"loras":[{"name":"style","scale":1.5,"expert":"high_noise"}]"#, frames: 24
            )
            let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))
            try #require(done["status"] as? String == "Succeed", "\(done)")
            let loras = (done["results"] as? [String: Any])?["loras"] as? [[String: Any]]
            #expect(loras?.count == 1, "\(done)")
            #expect(loras?.first?["name"] as? String == "style" && loras?.first?["expert"] as? String == "high_noise", "\(done)")
        }
    }
}
