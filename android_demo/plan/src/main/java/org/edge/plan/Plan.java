package org.edge.plan;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Arrays;

/** The plan that `edge export` writes beside the program (plan.json, format "edge-plan", version VERSION):
 * the inputs, the knobs, the outputs, the budget levels and, in the routed mode, the segments (one
 * program method each) and the decision after each. Parsing checks everything the driver relies on,
 * so that a malformed plan fails here with one line, not in the middle of a run. */
public final class Plan {
    public static final String FORMAT = "edge-plan";
    /** device/plan.schema.json's "version" const, where the plan format is defined (tests/test_plan_schema.py checks that they agree). */
    public static final int VERSION = 4;

    /** The knobs a gate reads one row of (device/driver.py KNOB_ROWS): the row of its ACM or MoE. */
    public static final List<String> KNOB_ROWS = Collections.unmodifiableList(Arrays.asList("gate_bias", "experts"));
    /** The most experts a MoE may have: a token's experts are the bits of an int64 (device/plan.schema.json). */
    public static final int MAX_EXPERTS = 62;

    /** What follows a segment: kind "end", "exit", "skip", "acm" or "moe", and where to go next. */
    public static final class Then {
        public final String kind;
        public final int layer, next, keep, skip, exit, router, acm, moe, n;
        public final String learners; // "acm": the method of the ACM's n learners (null otherwise)
        public final String experts; // "moe": the method of the MoE's n experts (null otherwise)
        public final boolean top; // "acm": the last piece is the original FFN, run alone by the tokens with k = n

        Then(String kind, int layer, int next, int keep, int skip, int exit, int router, int acm, int moe, String learners, String experts, int n, boolean top) {
            this.kind = kind;
            this.layer = layer;
            this.next = next;
            this.keep = keep;
            this.skip = skip;
            this.exit = exit;
            this.router = router;
            this.acm = acm;
            this.moe = moe;
            this.learners = learners;
            this.experts = experts;
            this.n = n;
            this.top = top;
        }

        /** "acm", "moe": the index of the adaptive FFN, its row of ks and of its knob (-1 otherwise). */
        public int adaptive() {
            return kind.equals("acm") ? acm : moe;
        }
    }

    /** One method of the program, the values it reads and writes by name, and the decision after it. */
    public static final class Segment {
        public final String method;
        public final List<String> inputs, outputs;
        public final Then then;

        Segment(String method, List<String> inputs, List<String> outputs, Then then) {
            this.method = method;
            this.inputs = inputs;
            this.outputs = outputs;
            this.then = then;
        }
    }

    /** A budget level: a name and a value for every knob. */
    public static final class Level {
        public final String name;
        public final Map<String, float[]> knobs;

        Level(String name, Map<String, float[]> knobs) {
            this.name = name;
            this.knobs = knobs;
        }
    }

    public final String runtime, mode, modelType;
    /** "fp32", or the weights' quantization ("8da8w", "8da4w"): informational, the program computes it. */
    public final String precision;
    public final int layers, acms, learners, experts; // learners per ACM, experts per MoE (0 without)
    public final List<String> inputs, outputs;
    public final Map<String, Integer> knobs; // name -> length
    public final Map<String, long[]> knobShapes; // name -> shape (row-major: a gate's row is a slice)
    public final Map<String, String> methods; // method -> program file
    public final List<Segment> segments; // (empty in the graph mode)
    public final List<Level> levels;
    public final List<String> checks; // the branch-forcing cases bundled in checks.safetensors
    public final double tolerance;
    private final int moes; // (control_flow: a moe decision's index is below it)

    private Plan(Map<String, Object> p) {
        runtime = str(p, "runtime", "plan");
        mode = str(p, "mode", "plan");
        precision = p.containsKey("precision") ? str(p, "precision", "plan") : "fp32";
        if (!mode.equals("routed") && !mode.equals("graph")) throw bad("mode is \"" + mode + "\"; this app runs \"routed\" and \"graph\"");
        Map<String, Object> model = obj(p, "model", "plan");
        modelType = str(model, "type", "model");
        layers = count(model, "layers", "model", 1);
        inputs = names(list(p, "inputs", "plan"), "inputs");
        outputs = strings(list(p, "outputs", "plan"), "outputs");
        if (!outputs.containsAll(Arrays.asList("output", "exit_layer", "skipped"))) throw bad("outputs must name output, exit_layer and skipped");
        Map<String, Integer> k = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        for (Object o : list(p, "knobs", "plan")) {
            Map<String, Object> spec = asObj(o, "knobs");
            String name = str(spec, "name", "knob");
            List<Object> shape = list(spec, "shape", "knob");
            if (shape.isEmpty()) throw bad("knob " + name + " has no dimensions");
            long[] dims = new long[shape.size()];
            int length = 1;
            for (int i = 0; i < dims.length; i++) {
                double d = num(shape.get(i), "knob shape");
                if (d != Math.rint(d) || d < 1) throw bad("knob " + name + " has a size " + d + "; sizes are integers >= 1");
                dims[i] = (long) d;
                length *= (int) d;
            }
            k.put(name, length);
            shapes.put(name, dims);
        }
        knobs = Collections.unmodifiableMap(k);
        knobShapes = Collections.unmodifiableMap(shapes);
        Map<String, String> m = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : obj(p, "methods", "plan").entrySet()) m.put(e.getKey(), asStr(e.getValue(), "methods"));
        if (m.isEmpty()) throw bad("methods is empty");
        methods = Collections.unmodifiableMap(m);
        List<Level> lv = new ArrayList<>();
        for (Object o : list(p, "budget_levels", "plan")) {
            Map<String, Object> level = asObj(o, "budget_levels");
            Map<String, float[]> values = new LinkedHashMap<>();
            for (Map.Entry<String, Integer> e : knobs.entrySet()) {
                List<Object> v = list(level, e.getKey(), "budget level");
                if (v.size() != e.getValue()) throw bad("budget level " + level.get("name") + " gives " + v.size() + " values for " + e.getKey() + ", the knob has " + e.getValue());
                float[] f = new float[v.size()];
                for (int i = 0; i < f.length; i++) f[i] = (float) num(v.get(i), e.getKey());
                values.put(e.getKey(), f);
            }
            lv.add(new Level(str(level, "name", "budget level"), values));
        }
        if (lv.isEmpty()) throw bad("budget_levels is empty");
        levels = Collections.unmodifiableList(lv);
        List<String> cases = new ArrayList<>();
        if (p.containsKey("checks")) for (Object o : list(p, "checks", "plan")) cases.add(str(asObj(o, "checks"), "case", "check"));
        checks = Collections.unmodifiableList(cases);
        tolerance = p.containsKey("tolerance") ? num(p.get("tolerance"), "tolerance") : 1e-4;
        Object cf = p.get("control_flow");
        List<Object> acmList = cf instanceof Map ? list(asObj(cf, "control_flow"), "acms", "control_flow") : Collections.emptyList();
        learners = acmList.isEmpty() ? 0 : count(asObj(acmList.get(0), "acms"), "learners", "acm", 1);
        List<Object> moeList = cf instanceof Map && asObj(cf, "control_flow").containsKey("moes") // (none before sigma-MoE)
                ? list(asObj(cf, "control_flow"), "moes", "control_flow") : Collections.emptyList();
        experts = moeList.isEmpty() ? 0 : count(asObj(moeList.get(0), "moes"), "experts", "moe", 1);
        for (Object o : moeList) {
            int e = count(asObj(o, "moes"), "experts", "moe", 1);
            if (e != experts || e > MAX_EXPERTS) throw bad("every MoE must have the same number of experts, at most " + MAX_EXPERTS + "; got " + e + " and " + experts);
        }
        moes = moeList.size();
        if (mode.equals("graph")) {
            segments = Collections.emptyList();
            acms = acmList.size();
            if (!methods.containsKey("forward")) throw bad("a graph-mode plan needs a \"forward\" method");
            return;
        }
        Map<String, Object> routed = obj(p, "routed", "plan");
        acms = count(routed, "acms", "routed", 0);
        List<Segment> segs = new ArrayList<>();
        for (Object o : list(routed, "segments", "routed")) segs.add(segment(asObj(o, "segments"), segs.size()));
        if (segs.isEmpty()) throw bad("routed.segments is empty");
        segments = Collections.unmodifiableList(segs);
        for (int i = 0; i < segs.size(); i++) check(segs.get(i), i);
    }

    /** Parse and check plan.json's text. */
    public static Plan parse(String text) {
        return of(Json.parse(text));
    }

    /** Check a parsed plan (as Json.parse returns it). */
    public static Plan of(Object o) {
        if (!(o instanceof Map)) throw bad("it is not a JSON object");
        @SuppressWarnings("unchecked") Map<String, Object> p = (Map<String, Object>) o;
        if (!FORMAT.equals(p.get("format"))) throw bad("it is not an edge plan (format is not \"" + FORMAT + "\")");
        Object v = p.get("version");
        if (!(v instanceof Double) || (Double) v != VERSION) // (exactly: as Python and the native runner compare it)
            throw new PlanException("plan.json has version " + v + "; this app reads version " + VERSION + ": export the model again with the matching edge, or update the app");
        return new Plan(p);
    }

    /** The knobs of the budget level `name`. */
    public Level level(String name) {
        for (Level l : levels) if (l.name.equals(name)) return l;
        throw new PlanException("the plan has no budget level \"" + name + "\"");
    }

    private Segment segment(Map<String, Object> s, int i) {
        String where = "segment " + i;
        Map<String, Object> t = obj(s, "then", where);
        String kind = str(t, "kind", where);
        int layer = count(t, "layer", where, 0);
        switch (kind) {
            case "end":
                return new Segment(str(s, "method", where), strings(list(s, "inputs", where), where), strings(list(s, "outputs", where), where),
                        new Then(kind, layer, -1, -1, -1, -1, -1, -1, -1, null, null, 0, false));
            case "exit":
                return new Segment(str(s, "method", where), strings(list(s, "inputs", where), where), strings(list(s, "outputs", where), where),
                        new Then(kind, layer, count(t, "next", where, 0), -1, -1, count(t, "exit", where, 0), -1, -1, -1, null, null, 0, false));
            case "skip":
                return new Segment(str(s, "method", where), strings(list(s, "inputs", where), where), strings(list(s, "outputs", where), where),
                        new Then(kind, layer, -1, count(t, "keep", where, 0), count(t, "skip", where, 0), -1, count(t, "router", where, 0), -1, -1, null, null, 0, false));
            case "acm":
                return new Segment(str(s, "method", where), strings(list(s, "inputs", where), where), strings(list(s, "outputs", where), where),
                        new Then(kind, layer, count(t, "next", where, 0), -1, -1, -1, -1, count(t, "acm", where, 0), -1, str(t, "learners", where), null, count(t, "n", where, 1), bool(t, "top", where)));
            case "moe":
                return new Segment(str(s, "method", where), strings(list(s, "inputs", where), where), strings(list(s, "outputs", where), where),
                        new Then(kind, layer, count(t, "next", where, 0), -1, -1, -1, -1, -1, count(t, "moe", where, 0), null, str(t, "experts", where), count(t, "n", where, 1), false));
            default:
                throw bad(where + " ends in a decision of unknown kind \"" + kind + "\" (end, exit, skip, acm, moe); the app is older than the plan");
        }
    }

    private void check(Segment s, int i) {
        String where = "segment " + i;
        for (int target : new int[] {s.then.next, s.then.keep, s.then.skip})
            if (target >= segments.size()) throw bad(where + " jumps to segment " + target + ", but there are " + segments.size());
        if (!methods.containsKey(s.method)) throw bad(where + " calls method " + s.method + ", which the program does not have");
        if (s.then.learners != null && !methods.containsKey(s.then.learners)) throw bad(where + " calls learners " + s.then.learners + ", which the program does not have");
        if (s.then.experts != null && !methods.containsKey(s.then.experts)) throw bad(where + " calls experts " + s.then.experts + ", which the program does not have");
        if (s.then.kind.equals("exit") && s.then.exit >= knobs.getOrDefault("exit_thresholds", 0)) throw bad(where + " reads exit threshold " + s.then.exit + ", which the knobs lack");
        if (s.then.kind.equals("skip") && s.then.router >= knobs.getOrDefault("skip_thresholds", 0)) throw bad(where + " reads skip threshold " + s.then.router + ", which the knobs lack");
        if (s.then.kind.equals("acm") && s.then.acm >= acms) throw bad(where + " routes ACM " + s.then.acm + ", but the plan has " + acms);
        if (s.then.kind.equals("moe") && (s.then.moe >= moes || s.then.moe >= acms)) throw bad(where + " routes MoE " + s.then.moe + ", but the plan has " + Math.min(moes, acms));
        if (s.then.kind.equals("moe") && s.then.n != experts) throw bad(where + " runs " + s.then.n + " experts, the plan's MoEs have " + experts);
        if (s.then.kind.equals("skip") && (s.then.layer < 1 || s.then.layer > layers)) throw bad(where + " skips layer " + s.then.layer + " of " + layers);
        if (s.then.kind.equals("moe") && (s.then.layer < 1 || s.then.layer > layers)) throw bad(where + " routes the MoE of layer " + s.then.layer + " of " + layers);
        for (String in : s.inputs) {
            if (!KNOB_ROWS.contains(in)) continue;
            if (s.then.adaptive() < 0) throw bad(where + " reads knob " + in + " but ends in no ACM or MoE");
            if (!knobShapes.containsKey(in) || s.then.adaptive() >= knobShapes.get(in)[0]) throw bad(where + " reads row " + s.then.adaptive() + " of knob " + in + ", which the knobs lack");
        }
    }

    // ---- typed access with one-line errors ------------------------------------------------------------
    static PlanException bad(String what) {
        return new PlanException("plan.json is malformed: " + what + "; export the model again");
    }

    private static Object need(Map<String, Object> m, String key, String where) {
        if (!m.containsKey(key)) throw bad(where + " has no \"" + key + "\"");
        return m.get(key);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> asObj(Object o, String where) {
        if (!(o instanceof Map)) throw bad(where + " must hold objects");
        return (Map<String, Object>) o;
    }

    private static Map<String, Object> obj(Map<String, Object> m, String key, String where) {
        return asObj(need(m, key, where), where + "." + key);
    }

    @SuppressWarnings("unchecked")
    private static List<Object> list(Map<String, Object> m, String key, String where) {
        Object o = need(m, key, where);
        if (!(o instanceof List)) throw bad(where + "." + key + " must be a list");
        return (List<Object>) o;
    }

    private static String asStr(Object o, String where) {
        if (!(o instanceof String) || ((String) o).isEmpty()) throw bad(where + " must be a non-empty string");
        return (String) o;
    }

    private static String str(Map<String, Object> m, String key, String where) {
        return asStr(need(m, key, where), where + "." + key);
    }

    private static double num(Object o, String where) {
        if (!(o instanceof Double)) throw bad(where + " must be a number");
        return (Double) o;
    }

    private static boolean bool(Map<String, Object> m, String key, String where) {
        Object o = need(m, key, where);
        if (!(o instanceof Boolean)) throw bad(where + "." + key + " must be true or false");
        return (Boolean) o;
    }

    private static int count(Map<String, Object> m, String key, String where, int min) {
        double d = num(need(m, key, where), where + "." + key);
        if (d != Math.rint(d) || d < min) throw bad(where + "." + key + " must be an integer >= " + min + ", got " + d);
        return (int) d;
    }

    private static List<String> strings(List<Object> l, String where) {
        List<String> out = new ArrayList<>();
        for (Object o : l) out.add(asStr(o, where));
        return Collections.unmodifiableList(out);
    }

    private static List<String> names(List<Object> specs, String where) {
        List<String> out = new ArrayList<>();
        for (Object o : specs) out.add(str(asObj(o, where), "name", where));
        return Collections.unmodifiableList(out);
    }
}
