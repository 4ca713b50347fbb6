import Testing

@testable import ImageIntake

@Suite("Resolution planner")
struct ResolutionPlannerTests {
    /// Wan2.1-I2V-14B-480P.
    let p480 = ResolutionPlanner(nativeArea: 399_360, sizeMultiple: 16)

    func auto(_ width: Int, _ height: Int, _ planner: ResolutionPlanner? = nil) throws -> (width: Int, height: Int) {
        try (planner ?? p480).plan(.auto, imageWidth: width, imageHeight: height)
    }

    @Test("1920×1080 → 832×464 on the 480P area")
    func landscapeFullHD() throws {
        let size = try auto(1920, 1080)
        #expect(size.width == 832 && size.height == 464)
    }

    @Test("portrait 1080×1920 → 464×832")
    func portrait() throws {
        let size = try auto(1080, 1920)
        #expect(size.width == 464 && size.height == 832)
    }

    @Test("832×480 → 832×480 (the native frame itself)")
    func native() throws {
        let size = try auto(832, 480)
        #expect(size.width == 832 && size.height == 480)
    }

    @Test("square → 624×624 (round(sqrt(399360)) = 632, floored to 16)")
    func square() throws {
        let size = try auto(1000, 1000)
        #expect(size.width == 624 && size.height == 624)
        let one = try auto(1, 1)
        #expect(one.width == 624 && one.height == 624)
    }

    @Test("EXIF-rotated input is planned on its upright size")
    func exifRotated() throws {
        // A phone photo stored 4032×3024 with orientation 6 is 3024×4032 upright.
        let size = try auto(3024, 4032)
        #expect(size.width == 544 && size.height == 720)
        #expect(size.width * size.height <= 399_360)
    }

    @Test(
        "sides are multiples of m and the area stays within A",
        arguments: [
            (640, 480), (1280, 720), (4000, 3000), (3000, 4000), (1234, 567), (300, 1200), (1200, 300), (17, 13),
        ])
    func invariants(width: Int, height: Int) throws {
        let size = try auto(width, height)
        #expect(size.width % 16 == 0 && size.height % 16 == 0)
        #expect(size.width * size.height <= 399_360)
        #expect(size.width >= 16 && size.height >= 16)
    }

    @Test("exactly 1:4 and 4:1 are accepted")
    func aspectEdgeAccepted() throws {
        let tall = try auto(250, 1000)
        #expect(tall.width == 304 && tall.height == 1264)
        let wide = try auto(1000, 250)
        #expect(wide.width == 1264 && wide.height == 304)
    }

    @Test("just beyond 1:4 is refused, either way")
    func aspectJustBeyond() throws {
        #expect(throws: ImageIntakeError(.aspectRatio, "aspect ratio 1:4.01 is beyond 1:4 (the image is 250×1001)")) {
            try auto(250, 1001)
        }
        #expect(throws: ImageIntakeError(.aspectRatio, "aspect ratio 4.01:1 is beyond 4:1 (the image is 1001×250)")) {
            try auto(1001, 250)
        }
        #expect(throws: ImageIntakeError(.aspectRatio, "aspect ratio 1:5 is beyond 1:4 (the image is 200×1000)")) {
            try auto(200, 1000)
        }
        #expect(throws: ImageIntakeError(.aspectRatio, "aspect ratio 10:1 is beyond 4:1 (the image is 10×1)")) {
            try auto(10, 1)
        }
    }

    @Test("fixed sizes are used as they are, whatever the picture (cover-crop, no aspect check)")
    func fixed() throws {
        for (width, height) in [(1920, 1080), (1080, 1920), (1, 1), (5000, 100)] {
            let portrait = try p480.plan(.fixed(width: 480, height: 832), imageWidth: width, imageHeight: height)
            #expect(portrait.width == 480 && portrait.height == 832)
            let landscape = try p480.plan(.fixed(width: 832, height: 480), imageWidth: width, imageHeight: height)
            #expect(landscape.width == 832 && landscape.height == 480)
        }
    }

    @Test("a tiny area never gives a zero side")
    func degenerate() throws {
        let tiny = ResolutionPlanner(nativeArea: 64, sizeMultiple: 16)
        let size = try auto(400, 100, tiny)
        #expect(size.width == 16 && size.height == 16)
        let demo = ResolutionPlanner(nativeArea: 128 * 128, sizeMultiple: 16)
        let full = try auto(1920, 1080, demo)
        #expect(full.width == 160 && full.height == 96)
    }

    @Test("the 720P area")
    func p720() throws {
        let planner = ResolutionPlanner(nativeArea: 921_600, sizeMultiple: 16)
        let size = try auto(1920, 1080, planner)
        #expect(size.width == 1280 && size.height == 720)
    }
}
