package org.edge.plan;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.nio.charset.StandardCharsets;
import java.util.Collections;

/** BERT's WordPiece tokenizer, read from the tokenizer.json that `edge export` bundles (tokenizer/):
 * the BertNormalizer (clean text, spaces around CJK characters, lowercase and strip accents), the
 * BertPreTokenizer (whitespace and punctuation) and greedy longest-match WordPiece, then
 * [CLS] ... [SEP], truncated to a length. Tested against Hugging Face's tokenizer on real text. */
public final class Tokenizer {
    private final Map<String, Integer> vocab;
    private final boolean lowercase, stripAccents, chinese, clean;
    private final String prefix, unk;
    private final int maxChars;

    private Tokenizer(Map<String, Integer> vocab, boolean lowercase, boolean stripAccents, boolean chinese, boolean clean,
                      String prefix, String unk, int maxChars) {
        this.vocab = vocab;
        this.lowercase = lowercase;
        this.stripAccents = stripAccents;
        this.chinese = chinese;
        this.clean = clean;
        this.prefix = prefix;
        this.unk = unk;
        this.maxChars = maxChars;
    }

    @SuppressWarnings("unchecked")
    public static Tokenizer load(Path tokenizerJson) throws IOException {
        Map<String, Object> t = (Map<String, Object>) Json.parse(new String(Files.readAllBytes(tokenizerJson), StandardCharsets.UTF_8));
        Map<String, Object> model = (Map<String, Object>) t.get("model");
        if (model == null || !"WordPiece".equals(model.get("type")))
            throw new PlanException(tokenizerJson + " is not a WordPiece tokenizer; the app reads BERT-family tokenizers");
        Map<String, Integer> vocab = new HashMap<>();
        for (Map.Entry<String, Object> e : ((Map<String, Object>) model.get("vocab")).entrySet()) vocab.put(e.getKey(), ((Double) e.getValue()).intValue());
        Map<String, Object> norm = t.get("normalizer") instanceof Map ? (Map<String, Object>) t.get("normalizer") : Collections.<String, Object>emptyMap();
        boolean lower = !Boolean.FALSE.equals(norm.get("lowercase"));
        Object strip = norm.get("strip_accents");
        return new Tokenizer(vocab, lower, strip == null ? lower : (Boolean) strip, !Boolean.FALSE.equals(norm.get("handle_chinese_chars")),
                !Boolean.FALSE.equals(norm.get("clean_text")), (String) model.getOrDefault("continuing_subword_prefix", "##"),
                (String) model.getOrDefault("unk_token", "[UNK]"), ((Double) model.getOrDefault("max_input_chars_per_word", 100.0)).intValue());
    }

    /** input_ids for `text`: [CLS] pieces [SEP], at most maxLength of them. */
    public long[] encode(String text, int maxLength) {
        List<Integer> ids = new ArrayList<>();
        ids.add(id("[CLS]"));
        for (String word : words(normalize(text))) {
            if (ids.size() >= maxLength - 1) break;
            ids.addAll(pieces(word));
        }
        List<Integer> kept = new ArrayList<>(ids.subList(0, Math.min(ids.size(), maxLength - 1)));
        kept.add(id("[SEP]"));
        long[] out = new long[kept.size()];
        for (int i = 0; i < out.length; i++) out[i] = kept.get(i);
        return out;
    }

    private int id(String token) {
        Integer i = vocab.get(token);
        if (i == null) throw new PlanException("the tokenizer's vocabulary has no " + token);
        return i;
    }

    private String normalize(String text) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < text.length(); ) {
            int c = text.codePointAt(i);
            i += Character.charCount(c);
            if (clean && (c == 0 || c == 0xFFFD || (isControl(c)))) continue;
            if (clean && isWhitespace(c)) {
                b.append(' ');
            } else if (chinese && isCjk(c)) {
                b.append(' ').appendCodePoint(c).append(' ');
            } else {
                b.appendCodePoint(c);
            }
        }
        String s = b.toString();
        if (stripAccents) {
            s = Normalizer.normalize(s, Normalizer.Form.NFD);
            StringBuilder k = new StringBuilder();
            for (int i = 0; i < s.length(); ) {
                int c = s.codePointAt(i);
                i += Character.charCount(c);
                if (Character.getType(c) != Character.NON_SPACING_MARK) k.appendCodePoint(c);
            }
            s = k.toString();
        }
        return lowercase ? s.toLowerCase(java.util.Locale.ROOT) : s;
    }

    private static List<String> words(String s) {
        List<String> out = new ArrayList<>();
        StringBuilder w = new StringBuilder();
        for (int i = 0; i < s.length(); ) {
            int c = s.codePointAt(i);
            i += Character.charCount(c);
            if (isWhitespace(c) || isPunctuation(c)) {
                if (w.length() > 0) out.add(w.toString());
                w.setLength(0);
                if (isPunctuation(c)) out.add(new String(Character.toChars(c)));
            } else {
                w.appendCodePoint(c);
            }
        }
        if (w.length() > 0) out.add(w.toString());
        return out;
    }

    private List<Integer> pieces(String word) {
        if (word.codePointCount(0, word.length()) > maxChars) return Collections.singletonList(id(unk));
        List<Integer> out = new ArrayList<>();
        int start = 0;
        while (start < word.length()) {
            int end = word.length();
            Integer found = null;
            while (start < end) {
                String sub = (start > 0 ? prefix : "") + word.substring(start, end);
                found = vocab.get(sub);
                if (found != null) break;
                end = word.offsetByCodePoints(end, -1);
            }
            if (found == null) return Collections.singletonList(id(unk));
            out.add(found);
            start = end;
        }
        return out;
    }

    private static boolean isWhitespace(int c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || Character.getType(c) == Character.SPACE_SEPARATOR;
    }

    private static boolean isControl(int c) {
        if (c == '\t' || c == '\n' || c == '\r') return false;
        int t = Character.getType(c);
        return t == Character.CONTROL || t == Character.FORMAT || t == Character.PRIVATE_USE || t == Character.SURROGATE || t == Character.UNASSIGNED;
    }

    private static boolean isPunctuation(int c) {
        if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
        int t = Character.getType(c);
        return t == Character.CONNECTOR_PUNCTUATION || t == Character.DASH_PUNCTUATION || t == Character.START_PUNCTUATION
                || t == Character.END_PUNCTUATION || t == Character.INITIAL_QUOTE_PUNCTUATION || t == Character.FINAL_QUOTE_PUNCTUATION
                || t == Character.OTHER_PUNCTUATION;
    }

    private static boolean isCjk(int c) {
        return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F)
                || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
    }

    /** java -cp plan.jar org.edge.plan.Tokenizer TOKENIZER_JSON MAX_LENGTH < lines: one line of ids per line. */
    public static void main(String[] args) throws IOException {
        Tokenizer t = load(java.nio.file.Paths.get(args[0]));
        int max = Integer.parseInt(args[1]);
        java.io.BufferedReader r = new java.io.BufferedReader(new java.io.InputStreamReader(System.in, java.nio.charset.StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        for (String line; (line = r.readLine()) != null; ) {
            long[] ids = t.encode(line, max);
            for (int i = 0; i < ids.length; i++) out.append(i == 0 ? "" : " ").append(ids[i]);
            out.append('\n');
        }
        System.out.print(out);
    }
}
